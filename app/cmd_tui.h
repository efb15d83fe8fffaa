/* `mergescope [RECIPE.json | --base DIR --model DIR...]`: the workbench. */
#ifndef MS_APP_CMD_TUI_H
#define MS_APP_CMD_TUI_H

/* argv[0] is the program name; the rest are the TUI's options. Returns
 * the exit status (cli.h): 3 for a missing or bad recipe or model. */
int cmd_tui(int argc, char **argv);

#endif
