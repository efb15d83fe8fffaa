/* `mergescope [RECIPE.json | --base DIR --model DIR...]`: the workbench. */
#ifndef MS_APP_CMD_TUI_H
#define MS_APP_CMD_TUI_H

/* argv[0] is the program name; the rest are the TUI's options. */
int cmd_tui(int argc, char **argv);

#endif
