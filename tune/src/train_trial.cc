// A trial that is a whole Train run: the trial's actor drives a TorchTrainer (its own
// worker group) whose config is the trainer's merged with the trial's values. Rank 0's
// reports are the trial's results, the run's checkpoints the trial's.

#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "gantry/train.h"
#include "gantry/tune.h"
#include "tuner_driver.h"

namespace gantry::tune {
namespace detail {
namespace {

namespace fs = std::filesystem;

// Where the run keeps its own files on the trial's node: scratch, since the trial's
// checkpoints travel to the sweep's storage through its reports.
fs::path scratch_for(const TrialContext& t) {
  return fs::temp_directory_path() / "gantry_tune_train" / (t.experiment_name() + "_" + std::to_string(::getpid())) /
         t.trial_name();
}

}  // namespace

void gantry_tune_train_trial(TrialContext& t) {
  const Json& spec = session_of(t)->trainable_spec();
  fs::path scratch = scratch_for(t);
  std::error_code ec;
  fs::remove_all(scratch, ec);
  std::optional<std::string> resume_dir;
  if (auto ck = t.checkpoint()) resume_dir = ck->to_directory((scratch / "resume_from").string());
  bool stopped = false;
  train::TorchTrainer trainer = train::TorchTrainer::from_json(spec, [&](train::TrainerOptions& o) {
    o.config = o.config.merged(t.config());
    o.run.name = t.trial_name();  // unique per trial: the run's dashboard record is keyed by it
    o.run.storage_path = scratch.string();
    o.run.verbose = 0;
    if (resume_dir) o.resume_from_checkpoint = train::Checkpoint::from_directory(*resume_dir);
    o.run.on_report = [&](const Json& metrics, const std::optional<train::Checkpoint>& checkpoint) {
      std::optional<Checkpoint> ours;
      if (checkpoint) ours = Checkpoint::from_directory(checkpoint->path());
      try {
        t.report(metrics, std::move(ours));
        return true;
      } catch (const TrialStopped&) {
        stopped = true;
        return false;
      }
    };
  });
  train::Result r = trainer.fit();
  fs::remove_all(scratch, ec);
  fs::remove(scratch.parent_path(), ec);  // the experiment's scratch, once its last trial here is gone
  if (stopped) throw TrialStopped{};
  if (r.error) {
    throw Error("the trial's Train run failed: rank " + std::to_string(r.error->rank) + " on node " +
                r.error->node_id.substr(0, 12) + ": " + r.error->message);
  }
}
GANTRY_TRAINABLE(gantry_tune_train_trial);

}  // namespace detail

namespace {

detail::TrialSpec train_trial_spec(const train::TorchTrainer& trainer) {
  detail::TrialSpec s;
  s.trainable = "gantry_tune_train_trial";
  s.spec = trainer.to_json();
  s.one_node = false;
  // The trial's actor only drives the run; the run's workers hold the resources.
  const train::ScalingConfig& scaling = trainer.options().scaling;
  std::map<std::string, double> per_worker = scaling.resources_per_worker;
  if (per_worker.count("CPU") == 0) per_worker["CPU"] = 1;
  if (scaling.use_gpu && per_worker.count("GPU") == 0) per_worker["GPU"] = 1;
  for (auto& [kind, amount] : per_worker) {
    if (amount > 0) s.footprint[kind] = amount * scaling.num_workers.min;
  }
  return s;
}

TuneConfig driver_only(TuneConfig tune) {
  tune.resources_per_trial = Resources{.num_cpus = 0};
  return tune;
}

}  // namespace

Tuner::Tuner(const train::TorchTrainer& trainer, ParamSpace param_space, TuneConfig tune, RunConfig run)
    : driver_(std::make_unique<detail::TunerDriver>(train_trial_spec(trainer), std::move(param_space),
                                                    driver_only(std::move(tune)), std::move(run))) {}

Tuner Tuner::restore(const std::string& path, const train::TorchTrainer& trainer, RestoreOptions options) {
  return Tuner(detail::TunerDriver::restore(path, train_trial_spec(trainer), std::move(options)));
}

}  // namespace gantry::tune
