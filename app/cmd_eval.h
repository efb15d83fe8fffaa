/* `mergescope eval` and `mergescope sweep`: the paper's measurements
 * (accuracy, mean response length in tokens, share of reflective responses)
 * of one model, or of every combination of recipe settings. */
#ifndef MS_APP_CMD_EVAL_H
#define MS_APP_CMD_EVAL_H

/* argv[0] is the command name. Return the process exit code: 0 ok,
 * 1 runtime failure or interrupted (the results so far are printed),
 * 2 usage, 3 bad model, recipe or benchmark file. */
int cmd_eval(int argc, char **argv);
int cmd_sweep(int argc, char **argv);

#endif
