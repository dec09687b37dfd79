// Tensors as gantry values (gantry/train/tensor.h): the codec on its own, then put/get,
// tasks and actors on the embedded cluster, whose worker processes run this executable.

#include "gantry/train/tensor.h"

#include <gantry/gantry.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace train = gantry::train;

torch::Tensor round_trip(const torch::Tensor& t) {
  return gantry::decode_from<torch::Tensor>(gantry::encode_to_string(t));
}

// Same dtype, shape and bytes (torch::equal lacks some dtypes on the CPU, complex32 say).
void expect_same(const torch::Tensor& expected, const torch::Tensor& got) {
  ASSERT_TRUE(got.defined());
  EXPECT_EQ(got.scalar_type(), expected.scalar_type());
  EXPECT_EQ(got.sizes(), expected.sizes());
  EXPECT_TRUE(got.is_contiguous());
  torch::Tensor e = expected.resolve_conj().resolve_neg().contiguous();
  ASSERT_EQ(got.numel(), e.numel());
  if (e.numel() > 0) {
    EXPECT_EQ(std::memcmp(got.data_ptr(), e.data_ptr(), e.numel() * e.element_size()), 0) << "values differ";
  }
}

// The file this process has mapped at `p`, or "" for anonymous memory.
std::string mapped_file_at(const void* p) {
  std::ifstream maps("/proc/self/maps");
  auto at = reinterpret_cast<uintptr_t>(p);
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    uintptr_t begin = 0, end = 0;
    char dash = 0;
    in >> std::hex >> begin >> dash >> end;
    if (at < begin || at >= end) continue;
    std::string perms, offset, device, inode, path;
    in >> perms >> offset >> device >> inode;
    std::getline(in >> std::ws, path);
    return path;
  }
  return "";
}

bool in_object_store(const torch::Tensor& t) { return mapped_file_at(t.data_ptr()).rfind("/dev/shm/gantry_", 0) == 0; }

// ---- The codec alone (no cluster) ----

TEST(TensorCodec, EveryDtypeRoundTrips) {
  for (const auto& d : train::detail::kTensorDtypes) {
    SCOPED_TRACE(std::string(d.name));
    torch::Tensor t = torch::arange(24, torch::kDouble).reshape({2, 3, 4}).sub(7).div(3);
    if (d.type == at::kComplexHalf) {
      // Few CPU kernels for complex32: fill its bytes from float16 (real, imaginary) pairs.
      torch::Tensor pairs = torch::randn({2, 3, 4, 2}).to(torch::kHalf).contiguous();
      t = torch::empty({2, 3, 4}, at::kComplexHalf);
      std::memcpy(t.data_ptr(), pairs.data_ptr(), pairs.numel() * pairs.element_size());
    } else {
      t = t.to(d.type);
    }
    expect_same(t, round_trip(t));
  }
}

TEST(TensorCodec, ShapesIncludingScalarsAndEmpty) {
  for (auto sizes : std::vector<std::vector<int64_t>>{{}, {0}, {3, 0, 2}, {1}, {5, 1, 7}, {2, 3, 4, 5}}) {
    SCOPED_TRACE(::testing::PrintToString(sizes));
    torch::Tensor t = torch::randn(sizes);
    torch::Tensor got = round_trip(t);
    expect_same(t, got);
  }
  torch::Tensor scalar = torch::tensor(3.5);
  EXPECT_EQ(round_trip(scalar).dim(), 0);
  EXPECT_EQ(round_trip(scalar).item<float>(), 3.5f);
}

TEST(TensorCodec, NonContiguousAndLazyViewsArriveContiguousAndResolved) {
  torch::Tensor base = torch::arange(60, torch::kFloat).reshape({6, 10});
  torch::Tensor transposed = base.t();
  torch::Tensor strided = base.slice(1, 1, 10, 3);
  torch::Tensor expanded = torch::arange(3, torch::kFloat).expand({4, 3});
  ASSERT_FALSE(transposed.is_contiguous());
  for (const torch::Tensor& t : {transposed, strided, expanded}) {
    torch::Tensor got = round_trip(t);
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_TRUE(torch::equal(got, t));
  }
  torch::Tensor complex = torch::randn({4}, torch::kComplexFloat);
  torch::Tensor conj = complex.conj();
  ASSERT_TRUE(conj.is_conj());
  torch::Tensor got = round_trip(conj);
  EXPECT_FALSE(got.is_conj());
  EXPECT_TRUE(torch::equal(got, conj.resolve_conj()));
  EXPECT_TRUE(torch::equal(round_trip(-complex.conj()), -complex.conj()));
}

TEST(TensorCodec, UndefinedIsNil) {
  std::string bytes = gantry::encode_to_string(torch::Tensor());
  EXPECT_EQ(bytes, std::string(1, '\xc0'));
  EXPECT_FALSE(gantry::decode_from<torch::Tensor>(bytes).defined());
}

TEST(TensorCodec, KeepsRequiresGradAsALeaf) {
  torch::Tensor w = torch::randn({3}, torch::requires_grad());
  torch::Tensor got = round_trip(w * 2);  // a non-leaf arrives as a leaf
  EXPECT_TRUE(got.requires_grad());
  EXPECT_TRUE(got.is_leaf());
  EXPECT_FALSE(round_trip(torch::randn({3})).requires_grad());
}

TEST(TensorCodec, DataIsAlignedInTheEncodedBuffer) {
  // Whatever precedes it, the data starts at a multiple of 64 from the buffer's start.
  for (int prefix = 0; prefix < 70; ++prefix) {
    std::string label(static_cast<size_t>(prefix), 'x');
    torch::Tensor t = torch::full({100}, 1.25f);
    std::string bytes = gantry::encode_to_string(std::make_pair(label, t));
    size_t at = bytes.find(std::string(reinterpret_cast<const char*>(t.data_ptr()), 400));
    ASSERT_NE(at, std::string::npos);
    EXPECT_EQ(at % 64, 0u) << "prefix " << prefix;
    EXPECT_TRUE(torch::equal(gantry::decode_from<std::pair<std::string, torch::Tensor>>(bytes).second, t));
  }
}

TEST(TensorCodec, VectorOfTensorsUsesTheGenericVectorCodec) {
  std::vector<torch::Tensor> v{torch::randn({2, 2}), torch::Tensor(), torch::arange(5, torch::kLong),
                               torch::ones({0, 4}, torch::kBool)};
  auto got = gantry::decode_from<std::vector<torch::Tensor>>(gantry::encode_to_string(v));
  ASSERT_EQ(got.size(), 4u);
  EXPECT_TRUE(torch::equal(got[0], v[0]));
  EXPECT_FALSE(got[1].defined());
  EXPECT_TRUE(torch::equal(got[2], v[2]));
  EXPECT_EQ(got[3].sizes(), v[3].sizes());
  EXPECT_EQ(got[3].scalar_type(), torch::kBool);
}

TEST(TensorCodec, ChunkedDataDecodes) {
  // Data over 4 GiB travels as an array of bins; the decoder joins them. Hand-made here.
  torch::Tensor t = torch::arange(10, torch::kInt);
  std::string out(64 + 40, '\0');
  auto encode = [&](gantry::Writer& w) {
    w.array(6);
    w.str("int32");
    w.array(1);
    w.sint(10);
    w.str("cpu");
    w.boolean(false);
    w.bin(nullptr, 0);
    w.array(3);
    const auto* p = static_cast<const uint8_t*>(t.data_ptr());
    w.bin(p, 12);
    w.bin(p + 12, 0);
    w.bin(p + 12, 28);
  };
  gantry::Writer counter;
  encode(counter);
  out.resize(counter.size());
  gantry::Writer w(reinterpret_cast<uint8_t*>(out.data()));
  encode(w);
  EXPECT_TRUE(torch::equal(gantry::decode_from<torch::Tensor>(out), t));
}

TEST(TensorCodec, TruncatedOrCorruptBytesThrowDecodeError) {
  torch::Tensor t = torch::randn({3, 5});
  std::string bytes = gantry::encode_to_string(t);
  for (size_t n = 0; n < bytes.size(); ++n)
    EXPECT_THROW(gantry::decode_from<torch::Tensor>(std::string_view(bytes).substr(0, n)), gantry::DecodeError)
        << "truncated to " << n << " bytes";
  // Any byte flipped: an error or some tensor, never a crash or another exception type.
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (uint8_t flip : {0x01, 0x80, 0xff}) {
      std::string bad = bytes;
      bad[i] = static_cast<char>(bad[i] ^ flip);
      try {
        gantry::decode_from<torch::Tensor>(bad);
      } catch (const gantry::DecodeError&) {
      }
    }
  }
  auto encode_with = [&](const char* dtype, std::vector<int64_t> sizes, const char* device, bool grad, size_t n) {
    std::string out(1024, '\0');
    for (int pass = 0; pass < 2; ++pass) {
      gantry::Writer w(pass == 0 ? nullptr : reinterpret_cast<uint8_t*>(out.data()));
      w.array(6);
      w.str(dtype);
      w.array(sizes.size());
      for (int64_t s : sizes) w.sint(s);
      w.str(device);
      w.boolean(grad);
      w.bin(nullptr, 0);
      w.bin(t.data_ptr(), n);
      if (pass == 0) out.resize(w.size());
    }
    return out;
  };
  EXPECT_NO_THROW(gantry::decode_from<torch::Tensor>(encode_with("float32", {3, 5}, "cpu", false, 60)));
  EXPECT_THROW(gantry::decode_from<torch::Tensor>(encode_with("float33", {3, 5}, "cpu", false, 60)),
               gantry::DecodeError);
  EXPECT_THROW(gantry::decode_from<torch::Tensor>(encode_with("float32", {3, 4}, "cpu", false, 60)),
               gantry::DecodeError);
  EXPECT_THROW(gantry::decode_from<torch::Tensor>(encode_with("float32", {-3, -5}, "cpu", false, 60)),
               gantry::DecodeError);
  EXPECT_THROW(gantry::decode_from<torch::Tensor>(encode_with("float32", {1LL << 40, 1LL << 40}, "cpu", false, 60)),
               gantry::DecodeError);
  EXPECT_THROW(gantry::decode_from<torch::Tensor>(encode_with("float32", {3, 5}, "toaster:9", false, 60)),
               gantry::DecodeError);
  EXPECT_THROW(gantry::decode_from<torch::Tensor>(encode_with("int32", {3, 5}, "cpu", true, 60)), gantry::DecodeError);
  EXPECT_THROW(gantry::decode_from<torch::Tensor>(std::string("\x93\x01\x02\x03", 4)), gantry::DecodeError);
}

TEST(TensorCodec, RefusesWhatItCannotSend) {
  EXPECT_THROW(gantry::encode_to_string(torch::eye(3).to_sparse()), gantry::Error);
  EXPECT_THROW(gantry::encode_to_string(torch::empty({2}, torch::TensorOptions().device(torch::kMeta))), gantry::Error);
  EXPECT_THROW(gantry::encode_to_string(torch::quantize_per_tensor(torch::ones({2}), 0.1, 0, torch::kQInt8)),
               gantry::Error);
}

// ---- Aliasing through DecodeSource (the core's hook), without a cluster ----

struct AlignedBytes {
  explicit AlignedBytes(const std::string& bytes)
      : data(static_cast<uint8_t*>(std::aligned_alloc(4096, (bytes.size() + 4095) / 4096 * 4096))), size(bytes.size()) {
    std::memcpy(data, bytes.data(), bytes.size());
  }
  ~AlignedBytes() { std::free(data); }
  uint8_t* data;
  size_t size;
};

TEST(DecodeSource, RetainsOnlyBytesInsideTheInnermostSource) {
  uint8_t storage[80] = {};
  uint8_t* buffer = storage + 8;
  auto keep = std::make_shared<int>(1);
  EXPECT_EQ(gantry::DecodeSource::retain(buffer, 8), nullptr) << "no source open";
  {
    gantry::DecodeSource source(buffer, 64, keep);
    EXPECT_EQ(gantry::DecodeSource::retain(buffer, 64), keep);
    EXPECT_EQ(gantry::DecodeSource::retain(buffer + 60, 4), keep);
    EXPECT_EQ(gantry::DecodeSource::retain(buffer + 60, 5), nullptr) << "runs past the end";
    EXPECT_EQ(gantry::DecodeSource::retain(buffer - 1, 4), nullptr) << "starts before it";
    {
      uint8_t other[8] = {};
      gantry::DecodeSource inner(other, sizeof(other), nullptr);
      EXPECT_EQ(gantry::DecodeSource::retain(buffer, 8), nullptr) << "the innermost source decides";
    }
    EXPECT_EQ(gantry::DecodeSource::retain(buffer, 8), keep) << "the outer source is back";
  }
  EXPECT_EQ(gantry::DecodeSource::retain(buffer, 8), nullptr);
}

TEST(DecodeSource, LargeTensorAliasesAndHoldsTheSource) {
  torch::Tensor big = torch::randn({256, 256});  // 256 KiB
  torch::Tensor small = torch::randn({16});
  AlignedBytes bytes(gantry::encode_to_string(std::vector<torch::Tensor>{big, small}));
  auto keep = std::make_shared<int>(7);
  std::weak_ptr<int> watch = keep;
  std::vector<torch::Tensor> got;
  {
    gantry::DecodeSource source(bytes.data, bytes.size, std::move(keep));
    got = gantry::decode_from<std::vector<torch::Tensor>>(bytes.data, bytes.size);
  }
  auto* p = static_cast<uint8_t*>(got[0].data_ptr());
  EXPECT_TRUE(p >= bytes.data && p < bytes.data + bytes.size) << "the large tensor aliases the buffer";
  auto* q = static_cast<uint8_t*>(got[1].data_ptr());
  EXPECT_FALSE(q >= bytes.data && q < bytes.data + bytes.size) << "a small one is copied";
  EXPECT_TRUE(torch::equal(got[0], big));
  EXPECT_TRUE(torch::equal(got[1], small));
  EXPECT_FALSE(watch.expired()) << "the tensor holds the source";
  torch::Tensor view = got[0].slice(0, 10, 20);
  got.clear();
  EXPECT_FALSE(watch.expired()) << "a view holds it too";
  view = torch::Tensor();
  EXPECT_TRUE(watch.expired()) << "released with the last user of the storage";

  // Without a source, the same bytes are copied.
  auto copied = gantry::decode_from<std::vector<torch::Tensor>>(bytes.data, bytes.size);
  auto* c = static_cast<uint8_t*>(copied[0].data_ptr());
  EXPECT_FALSE(c >= bytes.data && c < bytes.data + bytes.size);
}

// ---- StateDict ----

torch::nn::Sequential make_net(int64_t in = 3, int64_t hidden = 8, int64_t out = 2) {
  return torch::nn::Sequential(torch::nn::Linear(in, hidden), torch::nn::BatchNorm1d(hidden),
                               torch::nn::Linear(hidden, out));
}

void randomize(torch::nn::Module& module, int seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.uniform_(-1, 1);
  for (auto& b : module.buffers()) {
    if (b.is_floating_point()) {
      b.uniform_(0.5, 1.5);
    } else {
      b.fill_(seed);
    }
  }
}

TEST(StateDict, HoldsParametersThenBuffersByName) {
  auto net = make_net();
  train::StateDict state = train::state_dict(*net);
  std::vector<std::string> names;
  for (const auto& [name, tensor] : state) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias",
                                             "1.running_mean", "1.running_var", "1.num_batches_tracked"}));
  EXPECT_FALSE(state.at("0.weight").requires_grad()) << "detached";
  EXPECT_THROW(state.at("nope"), gantry::Error);
  EXPECT_THROW(state.insert("0.bias", torch::zeros({1})), gantry::Error);
}

TEST(StateDict, RoundTripsAndLoadsIntoAnotherModule) {
  auto source = make_net();
  randomize(*source, 1);
  auto target = make_net();
  randomize(*target, 2);
  auto state = gantry::decode_from<train::StateDict>(gantry::encode_to_string(train::state_dict(*source)));
  train::load_state_dict(*target, state);
  auto want = train::state_dict(*source);
  auto got = train::state_dict(*target);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, tensor] : want) EXPECT_TRUE(torch::equal(got.at(name), tensor)) << name;
  EXPECT_TRUE(target->parameters()[0].requires_grad()) << "still a parameter";
}

TEST(StateDict, LoadNamesEveryMisfitAndChangesNothing) {
  auto net = make_net();
  randomize(*net, 3);
  train::StateDict before;
  for (const auto& [name, tensor] : train::state_dict(*net)) before.insert(name, tensor.clone());

  train::StateDict missing;
  train::StateDict extra;
  train::StateDict wrong_shape;
  for (const auto& [name, tensor] : train::state_dict(*make_net())) {
    if (name != "2.bias") missing.insert(name, tensor);
    extra.insert(name, tensor);
    wrong_shape.insert(name, name == "0.weight" ? torch::zeros({8, 4}) : tensor);
  }
  extra.insert("3.weight", torch::zeros({1}));
  auto message_of = [&](const train::StateDict& s) {
    try {
      train::load_state_dict(*net, s);
    } catch (const gantry::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of(missing).find("missing '2.bias'"), std::string::npos) << message_of(missing);
  EXPECT_NE(message_of(extra).find("unexpected '3.weight'"), std::string::npos) << message_of(extra);
  std::string shape = message_of(wrong_shape);
  EXPECT_NE(shape.find("'0.weight' has shape [8, 4] where the module has [8, 3]"), std::string::npos) << shape;
  for (const auto& [name, tensor] : train::state_dict(*net))
    EXPECT_TRUE(torch::equal(tensor, before.at(name))) << name << " changed";
}

TEST(StateDict, RepeatedNameOnTheWireIsADecodeError) {
  std::string out(256, '\0');
  gantry::Writer w(reinterpret_cast<uint8_t*>(out.data()));
  w.map(2);
  for (int i = 0; i < 2; ++i) {
    w.str("w");
    gantry::encode(w, torch::ones({1}));
  }
  out.resize(w.size());
  EXPECT_THROW(gantry::decode_from<train::StateDict>(out), gantry::DecodeError);
}

// ---- On the embedded cluster ----

torch::Tensor scale(torch::Tensor t, double factor) { return t * factor; }

std::vector<int64_t> numels(std::vector<torch::Tensor> tensors) {
  std::vector<int64_t> out;
  for (const auto& t : tensors) out.push_back(t.defined() ? t.numel() : -1);
  return out;
}

std::vector<torch::Tensor> split_rows(torch::Tensor t, int64_t parts) {
  std::vector<torch::Tensor> out;
  for (const auto& part : t.chunk(parts)) out.push_back(part);
  return out;
}

// What a task sees when it gets a large tensor by reference: [aliases the store, sum].
std::vector<double> get_in_task(gantry::ObjectRef<torch::Tensor> ref) {
  torch::Tensor t = ref.get();
  return {in_object_store(t) ? 1.0 : 0.0, t.sum().item<double>()};
}

class ModelHolder {
 public:
  static ModelHolder* create(int64_t in, int64_t hidden, int64_t out) { return new ModelHolder(in, hidden, out); }
  int64_t load(train::StateDict state) {
    train::load_state_dict(*net_, state);
    return static_cast<int64_t>(state.size());
  }
  train::StateDict state() { return train::state_dict(*net_); }

 private:
  ModelHolder(int64_t in, int64_t hidden, int64_t out) : net_(make_net(in, hidden, out)) {}
  torch::nn::Sequential net_;
};

}  // namespace

GANTRY_REMOTE(scale, numels, split_rows, get_in_task);
GANTRY_REMOTE(ModelHolder::create, &ModelHolder::load, &ModelHolder::state);

namespace {

class TensorCluster : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { gantry::init({.num_cpus = 4}); }
  static void TearDownTestSuite() { gantry::shutdown(); }
};

constexpr int64_t k64MiBFloats = int64_t{16} << 20;

TEST_F(TensorCluster, PutGet64MiBIsMappedNotCopiedAndCopyOnWrite) {
  torch::Tensor t = torch::rand({k64MiBFloats});
  auto ref = gantry::put(t);
  torch::Tensor a = ref.get();
  EXPECT_TRUE(torch::equal(a, t));
  EXPECT_TRUE(in_object_store(a)) << "mapped at " << mapped_file_at(a.data_ptr());
  torch::Tensor b = ref.get();
  EXPECT_TRUE(in_object_store(b));
  a.mul_(2);  // private pages of this reader: the object and other readers keep their values
  EXPECT_TRUE(torch::equal(b, t));
  EXPECT_TRUE(torch::equal(ref.get(), t));
  EXPECT_TRUE(torch::equal(a, t * 2));
}

TEST_F(TensorCluster, AMappedTensorKeepsItsObjectAfterTheRefIsGone) {
  torch::Tensor t = torch::rand({k64MiBFloats});
  torch::Tensor got;
  {
    auto ref = gantry::put(t);
    got = ref.get();
  }
  ASSERT_TRUE(in_object_store(got));
  // Objects of the same size would take over a freed object's file; ours is not freed.
  for (int i = 0; i < 3; ++i) {
    auto other = gantry::put(torch::full({k64MiBFloats}, static_cast<float>(i)));
    EXPECT_EQ(other.get()[0].item<float>(), static_cast<float>(i));
  }
  EXPECT_TRUE(torch::equal(got, t));
}

TEST_F(TensorCluster, TaskTakesAndReturnsTensors) {
  torch::Tensor small = torch::arange(10, torch::kFloat);
  EXPECT_TRUE(torch::equal(gantry::task(scale).remote(small, 3.0).get(), small * 3));
  torch::Tensor large = torch::rand({4 << 20});  // 16 MiB: through the store both ways
  EXPECT_TRUE(torch::equal(gantry::task(scale).remote(large, 0.5).get(), large * 0.5));
  auto large_ref = gantry::put(large);
  EXPECT_TRUE(torch::equal(gantry::task(scale).remote(large_ref, 2.0).get(), large * 2));
  torch::Tensor half = torch::randn({64, 64}).to(torch::kBFloat16);
  torch::Tensor got = gantry::task(scale).remote(half, 1.0).get();
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(got, half));
}

TEST_F(TensorCluster, ATaskGettingALargeTensorMapsIt) {
  torch::Tensor t = torch::ones({4 << 20});
  auto result = gantry::task(get_in_task).remote(gantry::put(t)).get();
  EXPECT_EQ(result[0], 1.0) << "the worker's tensor aliases the store";
  EXPECT_EQ(result[1], static_cast<double>(4 << 20));
}

TEST_F(TensorCluster, VectorsOfTensors) {
  std::vector<torch::Tensor> v{torch::rand({2 << 20}), torch::Tensor(), torch::arange(7, torch::kLong)};
  auto got = gantry::put(v).get();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_TRUE(torch::equal(got[0], v[0]));
  EXPECT_TRUE(in_object_store(got[0]));
  EXPECT_FALSE(got[1].defined());
  EXPECT_TRUE(torch::equal(got[2], v[2]));
  EXPECT_EQ(gantry::task(numels).remote(v).get(), (std::vector<int64_t>{2 << 20, -1, 7}));
  torch::Tensor rows = torch::rand({1024, 1024});
  auto parts = gantry::task(split_rows).remote(rows, int64_t{4}).get();
  ASSERT_EQ(parts.size(), 4u);
  EXPECT_TRUE(torch::equal(torch::cat(parts), rows));
}

TEST_F(TensorCluster, ActorTakesAndReturnsAStateDict) {
  auto holder = gantry::actor(ModelHolder::create).remote(int64_t{16}, int64_t{256}, int64_t{4});
  auto net = make_net(16, 256, 4);
  randomize(*net, 5);
  train::StateDict state = train::state_dict(*net);
  EXPECT_EQ(holder.task(&ModelHolder::load).remote(state).get(), static_cast<int64_t>(state.size()));
  train::StateDict back = holder.task(&ModelHolder::state).remote().get();
  ASSERT_EQ(back.size(), state.size());
  for (const auto& [name, tensor] : state) EXPECT_TRUE(torch::equal(back.at(name), tensor)) << name;

  // Through the store, as an ObjectRef, and with a misfit named in the remote error.
  EXPECT_EQ(holder.task(&ModelHolder::load).remote(gantry::put(state)).get(), static_cast<int64_t>(state.size()));
  auto wrong = train::state_dict(*make_net(16, 128, 4));
  try {
    holder.task(&ModelHolder::load).remote(wrong).get();
    ADD_FAILURE() << "a state of the wrong shapes loaded";
  } catch (const gantry::TaskError& e) {
    EXPECT_NE(e.remote_message().find("'0.weight' has shape [128, 16] where the module has [256, 16]"),
              std::string::npos)
        << e.remote_message();
  }
}

TEST_F(TensorCluster, CudaTensorComesBackOnTheGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA in this LibTorch or machine";
  torch::Tensor t = torch::randn({1024}, torch::kCUDA);
  torch::Tensor got = gantry::put(t).get();
  EXPECT_TRUE(got.is_cuda());
  EXPECT_TRUE(torch::equal(got.cpu(), t.cpu()));
  torch::Tensor doubled = gantry::task(scale).remote(t, 2.0).get();
  EXPECT_TRUE(doubled.is_cuda());
}

}  // namespace

int main(int argc, char** argv) {
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
