/* `mergescope tokenize`: token ids of a text as a JSON array. */
#ifndef MS_APP_CMD_TOKENIZE_H
#define MS_APP_CMD_TOKENIZE_H

/* argv[0] is "tokenize". Returns the exit status (cli.h): 0 ok, 1 runtime
 * failure (unreadable standard input), 2 usage, 3 a missing or bad
 * tokenizer file or model directory. */
int cmd_tokenize(int argc, char **argv);

#endif
