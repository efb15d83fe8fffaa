/* What the system says about memory, for sizing and reporting: Linux's
 * /proc; 0 where it does not say (another system, a field missing). */
#ifndef MS_COMMON_SYSMEM_H
#define MS_COMMON_SYSMEM_H

#include <stdint.h>

/* A field of /proc/self/status in bytes ("VmHWM", "RssAnon"). */
uint64_t lm_proc_status_bytes(const char *field);

/* Memory the system could give this process now without swapping
 * (MemAvailable: free memory plus the page cache it can drop). */
uint64_t lm_mem_available(void);

/* "15.2 GB": bytes in decimal units with three significant digits. */
void lm_format_bytes(char *buf, unsigned long size, uint64_t bytes);

#endif
