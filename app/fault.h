/* The command line's answer to a model file that shrinks under its memory
 * map while a command reads it: instead of dying by SIGBUS with no word, the
 * process says which file changed and exits with status 1 (a runtime
 * failure; nothing half-written is left: writers stage and rename). The
 * workbench installs its own handler, which also restores the terminal and
 * saves the recipe (tui/term.h). */
#ifndef MS_APP_FAULT_H
#define MS_APP_FAULT_H

void fault_install(void);

#endif
