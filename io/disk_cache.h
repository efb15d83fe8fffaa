/* A small on-disk cache of computed results (calibration measurements), so
 * that a second run over the same models and data reads them back instead
 * of recomputing. Entries are files named after a hash of their key, each
 * holding the whole key (a hash collision is then a miss, never a wrong
 * hit), the payload and a checksum; a damaged entry is a miss too. Writes
 * go through a temporary name and a rename, so a reader never sees half an
 * entry.
 *
 * Where: $MERGESCOPE_CACHE_DIR, else $XDG_CACHE_HOME/mergescope, else
 * $HOME/.cache/mergescope. MERGESCOPE_CACHE_DIR=off turns the cache off. */
#ifndef MS_IO_DISK_CACHE_H
#define MS_IO_DISK_CACHE_H

#include <stdbool.h>
#include <stddef.h>

/* The cache directory, or NULL when the cache is off or no location is
 * known. Caller frees. */
char *disk_cache_dir(void);

/* Reads the entry for (kind, key): 0 with a malloc'd payload in *data, or
 * 1 when there is no valid entry (absent, damaged, written for another key)
 * with *data NULL. A miss is not an error and records none. */
int disk_cache_get(const char *kind, const char *key, void **data, size_t *len);

/* Stores the entry. 0, 1 when the cache is off (nothing stored), or an
 * LM_E* code with a message (the caller may ignore it: the cache is an
 * optimisation). *path_out, if non-NULL,
 * receives the entry's file name (caller frees). */
int disk_cache_put(const char *kind, const char *key, const void *data, size_t len, char **path_out);

/* The file an entry would have; caller frees; NULL when the cache is off. */
char *disk_cache_path(const char *kind, const char *key);

#endif
