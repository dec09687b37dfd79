#pragma once

/// gantry::train: distributed data-parallel LibTorch training on a gantry cluster.
///
///     void train_loop(gantry::train::TrainContext& ctx) {
///       auto model = std::make_shared<Net>();
///       auto ddp = ctx.prepare_model(model);
///       auto loader = ctx.prepare_data(dataset, {.batch_size = 64, .shuffle = true, .seed = 1});
///       torch::optim::SGD opt(model->parameters(), ctx.config().get<double>("lr"));
///       for (int epoch = 0; epoch < 10; ++epoch) {
///         for (auto& batch : *loader) { ... loss.backward(); opt.step(); }
///         ctx.report({{"epoch", epoch}, {"loss", loss}}, gantry::train::Checkpoint::from_model(*model, opt, epoch));
///       }
///     }
///     GANTRY_TRAIN_LOOP(train_loop);
///
///     gantry::train::TorchTrainer trainer(train_loop, {.scaling = {.num_workers = 2}});
///     gantry::train::Result r = trainer.fit();

#include "gantry/gantry.h"
#include "gantry/train/checkpoint.h"
#include "gantry/train/config.h"
#include "gantry/train/context.h"
#include "gantry/train/data.h"
#include "gantry/train/ddp.h"
#include "gantry/train/options.h"
#include "gantry/train/result.h"
#include "gantry/train/trainer.h"
