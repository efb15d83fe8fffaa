#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lm_error.h"

int lm_open_regular(const char *path, int *fd, uint64_t *size)
{
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0)
        return lm_err(LM_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(*fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(*fd);
        *fd = -1;
        return lm_err(LM_EIO, "%s: not a regular file", path);
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

char *lm_read_file(const char *path, size_t max_bytes, size_t *len)
{
    int fd;
    uint64_t file_size;
    if (lm_open_regular(path, &fd, &file_size) != 0)
        return NULL;
    if (file_size > max_bytes) {
        lm_err(LM_EFORMAT, "%s: file is %lld bytes, more than the %zu allowed",
               path, (long long)file_size, max_bytes);
        close(fd);
        return NULL;
    }
    size_t size = (size_t)file_size;
    char *buf = lm_malloc(size + 1);
    if (!buf) {
        close(fd);
        return NULL;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            lm_err(LM_EIO, "%s: read failed: %s", path, r < 0 ? strerror(errno) : "unexpected end of file");
            free(buf);
            close(fd);
            return NULL;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = '\0';
    if (len)
        *len = size;
    return buf;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

bool lm_write_str(int fd, const char *s)
{
    return write_all(fd, s, strlen(s)) == 0;
}

int lm_write_file_atomic(const char *path, const void *data, size_t len)
{
    char *dir = lm_path_dirname(path);
    if (!dir)
        return LM_ENOMEM;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *tmp = lm_asprintf("%s/.%s.tmp-%ld", dir, base, (long)getpid());
    free(dir);
    if (!tmp)
        return LM_ENOMEM;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int rc = lm_err(LM_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    if (write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        int rc = lm_err(LM_EIO, "%s: write failed: %s", path, strerror(errno));
        close(fd);
        unlink(tmp);
        free(tmp);
        return rc;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        int rc = lm_err(LM_EIO, "%s: cannot replace: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return rc;
    }
    free(tmp);
    return 0;
}

int lm_copy_file(const char *src, const char *dst)
{
    size_t len;
    char *buf = lm_read_file(src, (size_t)1 << 31, &len);
    if (!buf)
        return LM_EIO;
    int rc = lm_write_file_atomic(dst, buf, len);
    free(buf);
    return rc;
}

char *lm_path_join(const char *dir, const char *name)
{
    if (name[0] == '/' || dir[0] == '\0' || strcmp(dir, ".") == 0)
        return lm_strdup(name);
    size_t n = strlen(dir);
    return lm_asprintf("%s%s%s", dir, dir[n - 1] == '/' ? "" : "/", name);
}

char *lm_path_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return lm_strdup(".");
    if (slash == path)
        return lm_strdup("/");
    return lm_strndup(path, (size_t)(slash - path));
}

bool lm_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

bool lm_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int lm_mkdir_p(const char *path)
{
    if (lm_is_dir(path))
        return 0;
    char *copy = lm_strdup(path);
    if (!copy)
        return LM_ENOMEM;
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(copy, 0755) != 0 && errno != EEXIST) {
            int rc = lm_err(LM_EIO, "%s: cannot create directory: %s", copy, strerror(errno));
            free(copy);
            return rc;
        }
        *p = '/';
    }
    int rc = 0;
    if (mkdir(copy, 0755) != 0 && errno != EEXIST)
        rc = lm_err(LM_EIO, "%s: cannot create directory: %s", copy, strerror(errno));
    free(copy);
    return rc;
}

void lm_remove_dir_flat(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p = lm_path_join(dir, e->d_name);
        if (p)
            unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(dir);
}

int lm_require_dir(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return lm_err(LM_EIO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return lm_err(LM_EINVAL, "%s: not a directory", dir);
    return 0;
}
