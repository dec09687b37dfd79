#pragma once

/// gantry::tune: hyperparameter sweeps as parallel trials with early stopping.
///
///     void objective(tune::TrialContext& t) {
///       double lr = t.config().get<double>("lr");
///       for (int step = 0; step < 100; ++step) t.report({{"loss", loss_at(lr, step)}, {"step", step}});
///     }
///     GANTRY_TRAINABLE(objective);
///
///     int main(int argc, char** argv) {
///       gantry::init(argc, argv);
///       tune::Tuner tuner(objective, {{"lr", tune::loguniform(1e-4, 1e-1)}},
///                         {.metric = "loss", .mode = tune::kMin, .num_samples = 50,
///                          .search_alg = tune::TPE(), .scheduler = tune::ASHA({.time_attr = "step"})});
///       tune::Result best = tuner.fit().best_result();
///     }
///
/// - search_space.h: domains (grid_search, choice, uniform, loguniform, ...) and ParamSpace
/// - searcher.h:     Searcher and the built-in ones (BasicVariant, TPE, BOHB, ConcurrencyLimiter)
/// - scheduler.h:    TrialScheduler and the built-in ones (FIFO, ASHA, HyperBand, MedianStopping, PBT)
/// - checkpoint.h:   a trial's saved state
/// - trial_context.h: what a trainable sees; GANTRY_TRAINABLE
/// - tuner.h:        Tuner, its options, ResultGrid

#include "gantry/tune/checkpoint.h"
#include "gantry/tune/scheduler.h"
#include "gantry/tune/search_space.h"
#include "gantry/tune/searcher.h"
#include "gantry/tune/trial_context.h"
#include "gantry/tune/tuner.h"
