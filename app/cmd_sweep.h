/* `mergescope sweep`: `eval` of every combination of recipe settings, each
 * merged in memory. */
#ifndef MS_APP_CMD_SWEEP_H
#define MS_APP_CMD_SWEEP_H

/* argv[0] is the command name. Returns the exit status (cli.h): 0 ok,
 * 1 runtime failure or interrupted (the rows so far are printed), 2 usage
 * (a bad --vary included), 3 a missing or bad recipe or model, or a bad
 * benchmark file. */
int cmd_sweep(int argc, char **argv);

#endif
