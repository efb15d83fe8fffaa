/* Path completion. */
#include "complete.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lm_error.h"

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int complete_path(const char *text, char *out, size_t out_size, char *list, size_t list_size)
{
    snprintf(out, out_size, "%s", text);
    if (list_size)
        list[0] = '\0';
    const char *slash = strrchr(text, '/');
    const char *prefix = slash ? slash + 1 : text;
    size_t plen = strlen(prefix);
    /* The folder to list: what is typed before the last '/', "~" as $HOME. */
    char dir[4096];
    const char *home = getenv("HOME");
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == text)
        snprintf(dir, sizeof(dir), "/");
    else if (text[0] == '~' && (text + 1 == slash || text[1] == '/') && home)
        snprintf(dir, sizeof(dir), "%s%.*s", home, (int)(slash - text - 1), text + 1);
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - text), text);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *nm = e->d_name;
        if (strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0)
            continue;
        if (nm[0] == '.' && prefix[0] != '.')
            continue;
        if (strncmp(nm, prefix, plen) != 0)
            continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 16;
            char **grown = lm_realloc_array(names, nc, sizeof(*names));
            if (!grown)
                break;
            names = grown;
            cap = nc;
        }
        if (!(names[n] = lm_strdup(nm)))
            break;
        n++;
    }
    closedir(d);
    if (n > 0) {
        qsort(names, n, sizeof(*names), compare_names);
        /* The longest prefix every match shares. */
        size_t common = strlen(names[0]);
        for (size_t i = 1; i < n; i++) {
            size_t k = 0;
            while (k < common && names[i][k] == names[0][k])
                k++;
            common = k;
        }
        bool is_dir = false;
        if (n == 1) {
            char full[8192];
            struct stat st;
            snprintf(full, sizeof(full), "%s/%s", dir, names[0]);
            is_dir = stat(full, &st) == 0 && S_ISDIR(st.st_mode);
        }
        snprintf(out, out_size, "%.*s%.*s%s", (int)(prefix - text), text, (int)common, names[0],
                 is_dir ? "/" : "");
        size_t used = 0;
        for (size_t i = 0; i < n && list_size; i++) {
            size_t need = strlen(names[i]) + (used ? 2 : 0);
            if (used + need + 1 > list_size)
                break;
            used += (size_t)snprintf(list + used, list_size - used, "%s%s", used ? "  " : "", names[i]);
        }
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return (int)n;
}
