#include <memory>
#include <string>

#include "gantry/tune/scheduler.h"
#include "scheduler_specs.h"

namespace gantry::tune {
namespace {

// Every trial runs until its trainable returns or the run's stop criteria end it; the
// order is the default one (pending trials first, in creation order).
class FifoScheduler final : public TrialScheduler {
 public:
  void setup(const std::string& metric, Mode mode) override {}
  Decision on_trial_result(const TrialTable& table, const TrialView& trial, const Json& result) override {
    return Decision::keep_going();
  }
  std::string name() const override { return "fifo"; }
  Json spec() const override { return {{"name", "fifo"}}; }
};

}  // namespace

std::shared_ptr<TrialScheduler> FIFO() { return std::make_shared<FifoScheduler>(); }

namespace detail {
std::shared_ptr<TrialScheduler> fifo_from_spec(const Json& spec) { return FIFO(); }
}  // namespace detail

}  // namespace gantry::tune
