/* The merged model as the engine sees it: a model_source serving the
 * workspace's cached merged tensors (in their output dtype, so a preview
 * runs exactly the weights `merge` would write), with the output config. */
#ifndef MS_CORE_WORKBENCH_MERGED_SOURCE_H
#define MS_CORE_WORKBENCH_MERGED_SOURCE_H

#include "model.h"
#include "workspace.h"

/* A source over `ws`'s merged cache. Call ws_merge_all() (or merge the
 * layers) first: a tensor not in the cache is an error naming it. The views
 * are valid until the cache entry is dropped (ws_set_recipe,
 * ws_drop_merged), so a model built on them must be freed first. */
struct model_source ws_model_source(struct workspace *ws);

/* Merges everything (all threads, progress, cancellable), then loads the
 * merged model with the output config on `params`. NULL with an error. */
struct model *ws_load_merged_model(struct workspace *ws, struct model_params params,
                                   lm_progress_fn progress, void *ud);

#endif
