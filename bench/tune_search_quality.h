#pragma once

#include <ostream>

namespace gantry::bench {

/// Search quality of TPE against random search on three standard test functions (Branin,
/// Hartmann-6, Rosenbrock-4), in-process: each searcher runs `trials` sequential trials
/// (suggest, evaluate, complete) for every seed in 1..`seeds`. Prints one line per
/// searcher and function, `tpe_median_regret_branin VALUE` and so on, where the regret is
/// the best value found minus the known optimum and VALUE its median over the seeds.
void print_search_quality(int trials, int seeds, std::ostream& out);

}  // namespace gantry::bench
