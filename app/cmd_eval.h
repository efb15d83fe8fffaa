/* `mergescope eval`: the paper's measurements (accuracy, mean response
 * length in tokens, share of reflective responses) of one model. */
#ifndef MS_APP_CMD_EVAL_H
#define MS_APP_CMD_EVAL_H

/* argv[0] is the command name. Returns the exit status (cli.h): 0 ok,
 * 1 runtime failure or interrupted (the results so far are printed), 2
 * usage, 3 a missing or bad model or recipe, or a bad benchmark file. */
int cmd_eval(int argc, char **argv);

#endif
