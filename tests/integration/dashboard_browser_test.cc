// The dashboard's page in a real browser: headless Chromium (Debian's `chromium`) loads
// the single-page app from an embedded cluster that runs tasks and an actor and has run a
// Train run and a Tune sweep, and this test reads what the page rendered (the DOM after
// its scripts ran) and saves a screenshot of each page under test-artifacts/dashboard/.
// It skips, saying why, where Chromium is absent. The binary is its own workers.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <filesystem>
#include <regex>
#include <thread>

#include "gantry/gantry.h"
#include "gantry/train.h"
#include "gantry/tune.h"
#include "support/shell.h"

namespace fs = std::filesystem;
namespace train = gantry::train;
namespace tune = gantry::tune;
using gantry::test_support::run;

namespace {

fs::path storage() {
  static fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("gantry_browser_test_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

int square(int x) {
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  return x * x;
}
GANTRY_REMOTE(square);

class Greeter {
 public:
  static Greeter* create() { return new Greeter(); }
  int greet() { return ++calls_; }

 private:
  int calls_ = 0;
};
GANTRY_REMOTE(Greeter::create, &Greeter::greet);

// Fits y = 3x - 1 on two workers, reporting loss and throughput each epoch.
void line_loop(train::TrainContext& ctx) {
  torch::manual_seed(1);
  auto model = torch::nn::Linear(1, 1);
  auto ddp = ctx.prepare_model(model.ptr());
  torch::optim::SGD opt(model->parameters(), 0.1);
  torch::Tensor x = torch::linspace(-1, 1, 64).unsqueeze(1);
  torch::Tensor y = 3 * x - 1;
  for (int epoch = 0; epoch < 12; ++epoch) {
    auto start = std::chrono::steady_clock::now();
    auto loss = torch::mse_loss(model->forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ctx.report({{"loss", loss.item<double>()}, {"epoch", epoch}, {"samples_per_second", 64 / std::max(seconds, 1e-6)}});
  }
}
GANTRY_TRAIN_LOOP(line_loop);

void constant(tune::TrialContext& t) { t.report({{"loss", t.config().get<double>("x")}}); }
GANTRY_TRAINABLE(constant);

void bowl(tune::TrialContext& t) {
  double x = t.config().get<double>("x");
  for (int step = 0; step < 8; ++step) t.report({{"loss", (x - 0.3) * (x - 0.3) + 1.0 / (step + 1)}});
}
GANTRY_TRAINABLE(bowl);

struct Page {
  std::string dom;
  bool ran = false;
};

class BrowserTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (const char* candidate : {"chromium", "chromium-browser", "google-chrome"}) {
      auto which = run(std::string("command -v ") + candidate);
      if (which.code == 0) {
        browser_ = which.out.substr(0, which.out.find('\n'));
        break;
      }
    }
    if (browser_.empty()) return;
    gantry::init({.num_cpus = 4, .num_gpus = 2, .dashboard = true, .dashboard_port = 0});
    train::TorchTrainer trainer(line_loop, {.scaling = {.num_workers = 2},
                                            .run = {.name = "browser_run", .storage_path = storage().string(), .verbose = 0}});
    train_result_ok_ = trainer.fit().error == std::nullopt;
    tune::Tuner tuner(bowl, {{"x", tune::uniform(0, 1)}},
                      {.metric = "loss", .mode = tune::kMin, .num_samples = 12, .scheduler = tune::ASHA({.max_t = 8})},
                      {.name = "browser_sweep", .storage_path = storage().string(), .verbose = 0});
    sweep_trials_ = static_cast<int>(tuner.fit().size());
    tune::Tuner big(constant, {{"x", tune::uniform(0, 1)}}, {.metric = "loss", .mode = tune::kMin, .num_samples = 1000},
                    {.name = "browser_big", .storage_path = storage().string(), .verbose = 0, .trial_files = false});
    big_trials_ = static_cast<int>(big.fit().size());
    greeter_ = std::make_unique<gantry::ActorHandle<Greeter>>(gantry::actor(Greeter::create).remote());
    greeter_->task(&Greeter::greet).remote().get();
    // Tasks keep running while the browser looks.
    load_ = std::thread([] {
      int i = 0;
      while (!stop_) gantry::task(square).remote(i++).get();
    });
    artifacts_ = fs::path(GANTRY_TEST_ARTIFACTS) / "dashboard";
    fs::create_directories(artifacts_);
  }
  static void TearDownTestSuite() {
    stop_ = true;
    if (load_.joinable()) load_.join();
    greeter_.reset();
    if (gantry::is_initialized()) gantry::shutdown();
    std::error_code ec;
    fs::remove_all(storage(), ec);
  }
  void SetUp() override {
    if (browser_.empty()) GTEST_SKIP() << "no Chromium here (install Debian's chromium package to run the browser test)";
  }

  // Loads `route` in a fresh headless browser signed in with a one-time link; returns
  // the DOM once the page's scripts ran, and saves a screenshot as `shot`.png.
  static Page open(const std::string& route, const std::string& shot) {
    Page page;
    fs::path profile = storage() / ("profile-" + shot);
    std::string common = browser_ + " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run "
                         "--window-size=1400,900 --virtual-time-budget=15000 --user-data-dir=" + profile.string();
    auto dom = run("timeout 120 " + common + " --dump-dom '" + gantry::dashboard_login_url() + route + "' 2>/dev/null");
    page.dom = dom.out;
    page.ran = dom.code == 0;
    fs::path png = artifacts_ / (shot + ".png");
    run("timeout 120 " + common + " --screenshot=" + png.string() + " '" + gantry::dashboard_login_url() + route +
        "' >/dev/null 2>&1");
    return page;
  }
  // A pattern for an opening tag `tag` whose class list holds `name`.
  static std::string element_with_class(const std::string& tag, const std::string& name) {
    return "<" + tag + " [^>]*class=\"([^\"]* )?" + name + "( [^\"]*)?\"";
  }
  static int count(const std::string& text, const std::string& pattern) {
    std::regex re(pattern);
    return static_cast<int>(std::distance(std::sregex_iterator(text.begin(), text.end(), re), std::sregex_iterator()));
  }

  static inline std::string browser_;
  static inline bool train_result_ok_ = false;
  static inline int sweep_trials_ = 0;
  static inline int big_trials_ = 0;
  static inline std::unique_ptr<gantry::ActorHandle<Greeter>> greeter_;
  static inline std::thread load_;
  static inline std::atomic<bool> stop_{false};
  static inline fs::path artifacts_;
};

TEST_F(BrowserTest, OverviewRendersTheClusterAtAGlance) {
  Page p = open("#/", "overview");
  ASSERT_TRUE(p.ran);
  EXPECT_EQ(count(p.dom, "data-ready=\"1\""), 1) << p.dom.substr(0, 2000);
  EXPECT_GE(count(p.dom, element_with_class("div", "resource-bar")), 2);  // CPU and GPU use at least
  EXPECT_GE(count(p.dom, "data-stat=\"nodes-alive\""), 1);
}

TEST_F(BrowserTest, NodesPageShowsNodeRowsAndGpuBars) {
  Page p = open("#/nodes", "nodes");
  ASSERT_TRUE(p.ran);
  EXPECT_EQ(count(p.dom, "data-page=\"nodes\""), 1) << p.dom.substr(0, 2000);
  EXPECT_EQ(count(p.dom, element_with_class("tr", "node-row")), 1);
  EXPECT_EQ(count(p.dom, element_with_class("div", "gpu-bar")), 2);  // the two logical GPUs
  EXPECT_GE(count(p.dom, "logical"), 2);
}

TEST_F(BrowserTest, ActorsPageListsTheActors) {
  Page p = open("#/actors", "actors");
  ASSERT_TRUE(p.ran);
  EXPECT_EQ(count(p.dom, "data-page=\"actors\""), 1) << p.dom.substr(0, 2000);
  EXPECT_GE(count(p.dom, element_with_class("tr", "actor-row")), 1);
  EXPECT_GE(count(p.dom, "Greeter"), 1);
  EXPECT_GE(count(p.dom, "data-action=\"kill\""), 1);
}

TEST_F(BrowserTest, TunePageShowsTheTrialTableTheBestTrialAndAPlot) {
  ASSERT_EQ(sweep_trials_, 12);
  Page p = open("#/tune/browser_sweep", "tune");
  ASSERT_TRUE(p.ran);
  EXPECT_EQ(count(p.dom, "data-page=\"tune-experiment\""), 1) << p.dom.substr(0, 2000);
  EXPECT_EQ(count(p.dom, element_with_class("tr", "trial-row")), 12);
  EXPECT_EQ(count(p.dom, element_with_class("section", "best-trial")), 1);
  EXPECT_GE(count(p.dom, "class=\"[^\"]*\\bplot\\b[^\"]*\"[^>]*data-metric=\"loss\""), 1);
  EXPECT_GE(count(p.dom, "class=\"[^\"]*\\bct-point\\b"), 8);  // at least one trial's curve, point by point
}

TEST_F(BrowserTest, ATuneTableOfAThousandTrialsRenders) {
  ASSERT_EQ(big_trials_, 1000);
  auto start = std::chrono::steady_clock::now();
  Page p = open("#/tune/browser_big", "tune_1000");
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(p.ran);
  EXPECT_EQ(count(p.dom, "data-page=\"tune-experiment\""), 1) << p.dom.substr(0, 2000);
  EXPECT_EQ(count(p.dom, element_with_class("tr", "trial-row")), 1000);
  EXPECT_EQ(count(p.dom, element_with_class("section", "best-trial")), 1);
  std::cout << "a thousand-trial experiment page: loaded, rendered and captured in " << seconds << " s\n";
}

TEST_F(BrowserTest, TrainPageShowsLossAndThroughputCurves) {
  ASSERT_TRUE(train_result_ok_);
  Page p = open("#/train/browser_run", "train");
  ASSERT_TRUE(p.ran);
  EXPECT_EQ(count(p.dom, "data-page=\"train-run\""), 1) << p.dom.substr(0, 2000);
  EXPECT_GE(count(p.dom, "data-metric=\"loss\""), 1);
  EXPECT_GE(count(p.dom, "data-metric=\"samples_per_second\""), 1);
  EXPECT_GE(count(p.dom, "class=\"[^\"]*\\bct-point\\b"), 12);  // 12 reports on the loss plot alone
  EXPECT_GE(count(p.dom, element_with_class("tr", "worker-row")), 2);
}

TEST_F(BrowserTest, TasksPageShowsTheRunningFunction) {
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));  // past the shared answers
  Page p = open("#/tasks", "tasks");
  ASSERT_TRUE(p.ran);
  EXPECT_EQ(count(p.dom, "data-page=\"tasks\""), 1) << p.dom.substr(0, 2000);
  EXPECT_GE(count(p.dom, "<tr class=\"[^\"]*\\bfunction-row\\b[^>]*square"), 1);
}

TEST_F(BrowserTest, WithoutSigningInThePageAsksForTheToken) {
  auto dom = run("timeout 120 " + browser_ + " --headless --no-sandbox --disable-gpu --dump-dom '" +
                 gantry::dashboard_url() + "/#/nodes' 2>/dev/null");
  EXPECT_NE(dom.out.find("cluster token"), std::string::npos) << dom.out.substr(0, 1000);
  EXPECT_EQ(dom.out.find("node-row"), std::string::npos);
}

}  // namespace

int main(int argc, char** argv) {
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
