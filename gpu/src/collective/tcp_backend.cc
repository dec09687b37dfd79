// The TCP backend: collectives among the ranks of a group over gantry's own TCP
// connections, one between every pair of ranks, each authenticated before it carries a byte.
//
// Joining. Rank 0 draws a 32-byte group secret and publishes it in the group's Store (the
// head's token-protected key-value store: only holders of the cluster token learn it).
// Every rank but the last listens on its node's address (port 0) and publishes "ip:port";
// rank j dials every rank i < j. The acceptor sends a 32-byte random challenge; the
// connector answers with its rank, a nonce of its own and HMAC-SHA256(secret, challenge ||
// "gantry-col" || connector || acceptor || nonce); the acceptor checks it in constant time
// and replies OK with HMAC(secret, nonce || "gantry-col-ok" || acceptor || connector ||
// challenge), which the connector checks in turn. So each side proves it holds the secret,
// over fresh randomness of the other side: a recorded handshake replays nowhere. The
// acceptor serves every pending handshake at once from one poll loop: a connection that
// sends a wrong MAC, claims a rank that does not dial this one or is connected already,
// sends more than a handshake, or stays silent for 5 s is closed and logged to stderr,
// and the acceptor keeps waiting for the real peers until the join bound (op_timeout).
// Once every pair is connected, the listening socket closes.
//
// Ops. Every op's traffic on a connection, per direction, is a frame: a 24-byte header
// {magic, op, sequence number of the frame on this direction, payload bytes} and then the
// payload, whose length both sides know from the op. The receiver checks the header before
// a payload byte lands, so ranks that call different ops or sizes get a CollectiveError
// instead of corrupt data. A transfer polls non-blocking sockets and moves whatever can
// move, so nothing deadlocks whatever the sizes. allreduce is a ring reduce-scatter then a
// ring allgather, pipelined at byte granularity: a block received from rank-1 is reduced
// as it arrives (through a staging buffer), and the reduced bytes go on to rank+1 at once.
// reduce_scatter and allgather are its two halves; reduce is the reduce-scatter plus a
// gather of the blocks at the root; broadcast is a pipelined chain from the root; barrier
// is a dissemination barrier of empty frames; send/recv are one frame on the pair's
// connection (a send completes once its bytes are in the socket). float16 and bfloat16
// are reduced in a float32 copy, so the ring carries 4-byte floats and rounds once.
//
// Failures. A peer that dies closes its sockets: the transfer sees EOF or a reset and
// throws naming the peer and the op. The first failure of any op (or abort) fails the
// group: every socket is shut down, so the peers' transfers wake and fail in turn, and
// every later op throws at once with the first reason. Each op is bounded by op_timeout.
// Sends use MSG_NOSIGNAL: no SIGPIPE.
//
// Concurrency: ops run on the communicator's op thread, one at a time. `abort` may come
// from any thread; it only takes `mu_` and shuts sockets down (the sockets are fixed once
// the constructor returns), which wakes a blocked poll.

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "collective/backend.h"
#include "collective/reduce_kernels.h"

namespace gantry::collective::detail {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kSecretBytes = 32;
constexpr size_t kNonceBytes = 32;  // the acceptor's challenge and the connector's nonce
constexpr size_t kMacBytes = 32;
constexpr size_t kResponseBytes = 4 + kNonceBytes + kMacBytes;  // connector: rank, nonce, MAC
constexpr size_t kReplyBytes = 1 + kMacBytes;                   // acceptor: OK, MAC
constexpr uint8_t kReplyOk = 1;
constexpr char kConnectorLabel[] = "gantry-col";
constexpr char kAcceptorLabel[] = "gantry-col-ok";

// How long an accepted connection may take to send its handshake.
constexpr milliseconds kHandshakeLimit{5000};
// How soon a connector dials again after a refused or broken attempt.
constexpr milliseconds kRedialDelay{100};
// Handshakes in progress at once on a listener; a flood closes the oldest first.
constexpr size_t kMaxPendingHandshakes = 64;
constexpr int kMaxLoggedRefusals = 32;

constexpr char kSecretKey[] = "tcp/secret";
constexpr char kAddressKeyPrefix[] = "tcp/addr/";

constexpr size_t kFrameHeaderBytes = 24;
constexpr uint32_t kFrameMagic = 0x6c6f6367;  // "gcol" in little-endian bytes
// Received bytes that need reducing land here first; one recv(2) reads at most this much.
constexpr size_t kStagingBytes = 512 << 10;
// Deadlines further out than this are treated as this (steady_clock must not overflow).
constexpr milliseconds kLongestWait = std::chrono::hours(24 * 365);

using Secret = std::array<uint8_t, kSecretBytes>;
using Nonce = std::array<uint8_t, kNonceBytes>;
using Mac = std::array<uint8_t, kMacBytes>;

std::string errno_text(int err) { return std::strerror(err); }

// An owned file descriptor; closes it on destruction.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  ~Socket() { reset(); }
  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

void random_bytes(uint8_t* out, size_t n) {
  while (n > 0) {
    ssize_t got = ::getrandom(out, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw CollectiveError("getrandom failed: " + errno_text(errno));
    }
    out += got;
    n -= static_cast<size_t>(got);
  }
}

std::string to_hex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

bool from_hex(const std::string& text, std::span<uint8_t> out) {
  if (text.size() != out.size() * 2) return false;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = digit(text[2 * i]), lo = digit(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

std::array<uint8_t, 4> rank_bytes(int rank) {
  std::array<uint8_t, 4> out;
  put_u32(out.data(), static_cast<uint32_t>(rank));
  return out;
}

std::span<const uint8_t> label_bytes(const char* label) {
  return {reinterpret_cast<const uint8_t*>(label), std::strlen(label)};
}

// HMAC-SHA256 of the concatenated parts.
Mac sign(const Secret& key, std::initializer_list<std::span<const uint8_t>> parts) {
  std::vector<uint8_t> message;
  for (auto part : parts) message.insert(message.end(), part.begin(), part.end());
  Mac mac;
  unsigned int length = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), message.data(), message.size(), mac.data(),
           &length) == nullptr ||
      length != mac.size())
    throw CollectiveError("HMAC-SHA256 failed");
  return mac;
}

// What the connector proves: it holds the secret, now (the challenge), as `connector`
// talking to `acceptor`.
Mac connector_mac(const Secret& key, const Nonce& challenge, int connector, int acceptor, const Nonce& nonce) {
  return sign(key, {challenge, label_bytes(kConnectorLabel), rank_bytes(connector), rank_bytes(acceptor), nonce});
}

// What the acceptor proves back, over the connector's nonce.
Mac acceptor_mac(const Secret& key, const Nonce& nonce, int acceptor, int connector, const Nonce& challenge) {
  return sign(key, {nonce, label_bytes(kAcceptorLabel), rank_bytes(acceptor), rank_bytes(connector), challenge});
}

bool same_mac(const uint8_t* a, const Mac& b) { return CRYPTO_memcmp(a, b.data(), b.size()) == 0; }

// "ip:port", or "[ip6]:port".
std::string endpoint_text(const sockaddr_storage& address) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (address.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(address);
    ::inet_ntop(AF_INET, &in.sin_addr, host, sizeof host);
    return std::string(host) + ":" + std::to_string(ntohs(in.sin_port));
  }
  if (address.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(address);
    ::inet_ntop(AF_INET6, &in6.sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(in6.sin6_port));
  }
  return "an unknown address";
}

std::string peer_endpoint(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return "an unknown peer";
  return endpoint_text(address);
}

// Parses "ip:port" or "[ip6]:port" (numeric only: the text comes from the store).
bool parse_endpoint(const std::string& text, sockaddr_storage* out, socklen_t* length) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  std::string host = text.substr(0, colon);
  std::string port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) return false;
  std::memcpy(out, found->ai_addr, found->ai_addrlen);
  *length = found->ai_addrlen;
  ::freeaddrinfo(found);
  return true;
}

int socket_error(int fd) {
  int err = 0;
  socklen_t length = sizeof err;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &length) != 0) return errno;
  return err;
}

// Every message is one write of a whole handshake step or frame piece: no Nagle delay.
void set_no_delay(int fd) {
  int on = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

void set_keep_alive(int fd) {
  int on = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
}

uint8_t* bytes_of(void* p) { return static_cast<uint8_t*>(p); }
const uint8_t* bytes_of(const void* p) { return static_cast<const uint8_t*>(p); }

// ---- Frames ------------------------------------------------------------------------------

// The op a frame belongs to (send and recv share one: they are the two ends of a frame).
enum class FrameOp : uint8_t {
  kAllreduce = 1,
  kBroadcast,
  kAllgather,
  kReduceScatter,
  kReduce,
  kBarrier,
  kPointToPoint,
};

std::string frame_op_name(uint8_t op) {
  switch (static_cast<FrameOp>(op)) {
    case FrameOp::kAllreduce:
      return "allreduce";
    case FrameOp::kBroadcast:
      return "broadcast";
    case FrameOp::kAllgather:
      return "allgather";
    case FrameOp::kReduceScatter:
      return "reduce_scatter";
    case FrameOp::kReduce:
      return "reduce";
    case FrameOp::kBarrier:
      return "barrier";
    case FrameOp::kPointToPoint:
      return "send/recv";
  }
  return "unknown op " + std::to_string(op);
}

std::array<uint8_t, kFrameHeaderBytes> encode_header(FrameOp op, uint64_t sequence, uint64_t bytes) {
  std::array<uint8_t, kFrameHeaderBytes> out{};
  put_u32(out.data(), kFrameMagic);
  out[4] = static_cast<uint8_t>(op);
  put_u64(out.data() + 8, sequence);
  put_u64(out.data() + 16, bytes);
  return out;
}

// Bytes to send: a contiguous piece of a buffer.
struct Piece {
  const uint8_t* data;
  size_t bytes;
};

// Where received bytes go: copied to `dst`, or, with `local`, reduced: dst = op(local,
// received), then divided by the world size when `finish` (the last combine of kAvg).
struct Landing {
  uint8_t* dst;
  size_t bytes;
  const uint8_t* local = nullptr;
  bool finish = false;
};

// One op's frame from one peer.
struct Inflow {
  int peer = -1;
  FrameOp op_code = FrameOp::kAllreduce;  // with `sequence` and `total`: the header expected
  uint64_t sequence = 0;
  std::array<uint8_t, kFrameHeaderBytes> header{};
  size_t header_got = 0;
  std::vector<Landing> landings;
  size_t total = 0;      // payload bytes
  size_t received = 0;   // payload bytes read from the socket
  size_t processed = 0;  // payload bytes in their final place (reduced where needed)
  size_t landing = 0;    // the landing `received` is in, and how far into it
  size_t landing_offset = 0;
  // Reduction, for landings with `local`.
  DataType type = DataType::kUInt8;
  ReduceOp op = ReduceOp::kSum;
  uint8_t* staging = nullptr;  // kStagingBytes; holds `staged` bytes: a partial element
  size_t staged = 0;

  void add(Landing l) {
    landings.push_back(l);
    total += l.bytes;
  }
  bool done() const { return header_got == kFrameHeaderBytes && received == total; }
};

// One op's frame to one peer. Its payload may depend on an Inflow: with a `feeder`, the
// first `head` bytes may go at once and each later byte once the feeder processed the
// corresponding byte (the ring: what comes in at step s goes out at step s+1).
struct Outflow {
  int peer = -1;
  FrameOp op_code = FrameOp::kAllreduce;
  uint64_t sequence = 0;
  std::array<uint8_t, kFrameHeaderBytes> header{};  // encoded when the transfer starts
  size_t header_sent = 0;
  std::vector<Piece> pieces;
  size_t total = 0;
  size_t sent = 0;
  size_t piece = 0;
  size_t piece_offset = 0;
  const Inflow* feeder = nullptr;  // not owned
  size_t head = 0;

  void add(Piece p) {
    pieces.push_back(p);
    total += p.bytes;
  }
  size_t ready() const { return feeder == nullptr ? total : std::min(total, head + feeder->processed); }
  bool sendable() const { return header_sent < kFrameHeaderBytes || sent < ready(); }
  bool done() const { return header_sent == kFrameHeaderBytes && sent == total; }
};

// Thrown inside an op; `run` turns it into the group's failure.
struct OpFailure {
  std::string reason;
};

enum class Pumped { kMoved, kBlocked, kIdle };

// ---- The handshake -----------------------------------------------------------------------

// One connection being authenticated, from either end.
struct Handshake {
  Socket socket;
  bool inbound = false;
  int peer = -1;       // outbound: the rank dialled; inbound: the rank claimed, once verified
  std::string remote;  // the other end's address, for messages
  // Outbound.
  sockaddr_storage address{};
  socklen_t address_length = 0;
  bool connecting = false;
  bool responded = false;
  Clock::time_point redial_at;
  std::string last_error;
  // Inbound.
  bool replied = false;
  Clock::time_point limit;
  // Both.
  std::vector<uint8_t> out;
  size_t out_sent = 0;
  std::vector<uint8_t> in;
  size_t in_want = 0;
  Nonce challenge{};
  Nonce nonce{};
  bool done = false;
};

// ---- The backend -------------------------------------------------------------------------

class TcpBackend final : public Backend {
 public:
  explicit TcpBackend(const BackendContext& context);

  BackendKind kind() const override { return BackendKind::kTcp; }
  void allreduce(void* data, size_t count, DataType type, ReduceOp op) override;
  void broadcast(void* data, size_t count, DataType type, int root) override;
  void allgather(const void* send, void* recv, size_t count, DataType type) override;
  void reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op) override;
  void reduce(void* data, size_t count, DataType type, ReduceOp op, int root) override;
  void barrier() override;
  void send(const void* data, size_t count, DataType type, int to) override;
  void recv(void* data, size_t count, DataType type, int from) override;
  void abort(const std::string& why) override { fail_group("aborted: " + why); }

 private:
  std::string where(const char* op) const {
    return "tcp group '" + group_ + "' rank " + std::to_string(rank_) + " of " + std::to_string(world_) + ": " + op +
           ": ";
  }
  int mod(int r) const { return ((r % world_) + world_) % world_; }
  void check_rank(const char* op, const char* what, int peer, bool self_ok) const;

  // Joining.
  void join(const std::string& host, Clock::time_point deadline);
  void dial(Handshake& h);
  void redial(Handshake& h, const std::string& why);
  void advance_outbound(Handshake& h, short revents);
  void advance_inbound(Handshake& h);
  std::string pump_handshake(Handshake& h);
  void refuse(Handshake& h, const std::string& why);
  void established(Handshake& h);

  // Ops.
  template <typename Body>
  void run(const char* op, Body&& body);
  void throw_if_failed(const char* op);
  std::string fail_group(const std::string& reason);
  Outflow outflow(FrameOp op, int peer);
  Inflow inflow(FrameOp op, int peer);
  void transfer(std::span<Outflow* const> outs, std::span<Inflow* const> ins);
  Pumped pump_out(Outflow& f);
  Pumped pump_in(Inflow& f);
  void check_header(const Inflow& f) const;
  [[noreturn]] void connection_lost(int peer, int err) const;
  void ring(FrameOp op, const uint8_t* input, uint8_t* acc, size_t count, DataType type, ReduceOp reduce_op,
            bool reduce, bool gather);

  const std::string group_;
  const int rank_;
  const int world_;
  const milliseconds op_timeout_;
  const std::shared_ptr<Store> store_;
  Secret secret_{};

  // By rank; fixed once the constructor returns (abort reads them from any thread).
  std::vector<Socket> peers_;

  // Join state (constructor only).
  Socket listener_;
  std::vector<bool> claimed_;  // inbound ranks verified (their reply may still be queued)
  int refusals_ = 0;

  // Op thread only.
  std::vector<uint64_t> frames_sent_;      // per peer
  std::vector<uint64_t> frames_received_;  // per peer
  Clock::time_point deadline_;
  std::unique_ptr<uint8_t[]> staging_;

  std::mutex mu_;
  std::atomic<bool> failed_{false};  // set once, under mu_, with failure_
  std::string failure_;              // guarded by mu_: the first failure's reason
};

TcpBackend::TcpBackend(const BackendContext& context)
    : group_(context.group),
      rank_(context.rank),
      world_(context.world_size),
      op_timeout_(context.op_timeout),
      store_(context.store) {
  if (world_ < 1 || rank_ < 0 || rank_ >= world_)
    throw CollectiveError("tcp group '" + group_ + "': rank " + std::to_string(rank_) + " is not in 0.." +
                          std::to_string(world_ - 1) + " (world size " + std::to_string(world_) + ")");
  if (world_ == 1) return;  // every op is local
  if (!store_) throw CollectiveError(where("join") + "no store to meet in");
  const auto deadline = Clock::now() + std::min(op_timeout_, kLongestWait);
  std::string host = "127.0.0.1";
  if (static_cast<size_t>(rank_) < context.node_ips.size() && !context.node_ips[rank_].empty())
    host = context.node_ips[rank_];
  peers_.resize(world_);
  claimed_.assign(world_, false);
  frames_sent_.assign(world_, 0);
  frames_received_.assign(world_, 0);
  staging_ = std::make_unique_for_overwrite<uint8_t[]>(kStagingBytes);
  join(host, deadline);
}

void TcpBackend::check_rank(const char* op, const char* what, int peer, bool self_ok) const {
  if (peer < 0 || peer >= world_ || (!self_ok && peer == rank_))
    throw CollectiveError(where(op) + "bad " + what + " rank " + std::to_string(peer) +
                          (peer == rank_ ? " (this rank)" : " (world size " + std::to_string(world_) + ")"));
}

// ---- Joining -----------------------------------------------------------------------------

void TcpBackend::join(const std::string& host, Clock::time_point deadline) {
  auto left = [&] {
    return std::max(milliseconds(1), std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
  };
  try {
    if (rank_ == 0) {
      random_bytes(secret_.data(), secret_.size());
      store_->set(kSecretKey, to_hex(secret_));
    } else if (!from_hex(store_->get(kSecretKey, left()), secret_)) {
      throw CollectiveError("the store's group secret is not " + std::to_string(2 * kSecretBytes) + " hex digits");
    }
  } catch (const std::exception& e) {
    throw CollectiveError(where("join") + "cannot share the group secret: " + e.what());
  }

  // Every rank but the last is dialled by the ranks above it.
  if (rank_ < world_ - 1) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    int rc = ::getaddrinfo(host.c_str(), "0", &hints, &found);
    if (rc != 0) throw CollectiveError(where("join") + "cannot resolve '" + host + "': " + gai_strerror(rc));
    std::string why = "no address";
    for (addrinfo* a = found; a != nullptr && !listener_.valid(); a = a->ai_next) {
      Socket s(::socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!s.valid() || ::bind(s.fd(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(s.fd(), 128) != 0) {
        why = errno_text(errno);
        continue;
      }
      listener_ = std::move(s);
    }
    ::freeaddrinfo(found);
    if (!listener_.valid()) throw CollectiveError(where("join") + "cannot listen on " + host + ": " + why);
    sockaddr_storage bound{};
    socklen_t length = sizeof bound;
    ::getsockname(listener_.fd(), reinterpret_cast<sockaddr*>(&bound), &length);
    try {
      store_->set(kAddressKeyPrefix + std::to_string(rank_), endpoint_text(bound));
    } catch (const std::exception& e) {
      throw CollectiveError(where("join") + "cannot publish this rank's address: " + e.what());
    }
  }

  std::vector<Handshake> dials(rank_);
  for (int p = 0; p < rank_; ++p) {
    Handshake& h = dials[p];
    h.peer = p;
    try {
      h.remote = store_->get(kAddressKeyPrefix + std::to_string(p), left());
    } catch (const std::exception& e) {
      throw CollectiveError(where("join") + "rank " + std::to_string(p) + " published no address within " +
                            std::to_string(op_timeout_.count()) + " ms: " + e.what());
    }
    if (!parse_endpoint(h.remote, &h.address, &h.address_length))
      throw CollectiveError(where("join") + "rank " + std::to_string(p) + " published '" + h.remote +
                            "', which is not an ip:port address");
  }

  std::deque<Handshake> accepts;
  auto missing = [&] {
    int n = 0;
    for (int p = 0; p < world_; ++p) n += p != rank_ && !peers_[p].valid();
    return n;
  };
  std::vector<pollfd> fds;
  std::vector<Handshake*> polled;
  while (missing() > 0) {
    auto now = Clock::now();
    if (now >= deadline) {
      std::string waits;
      for (int p = rank_ + 1; p < world_; ++p)
        if (!peers_[p].valid()) waits += (waits.empty() ? "" : ", ") + std::to_string(p);
      std::string text = where("join") + "timed out after " + std::to_string(op_timeout_.count()) + " ms";
      if (!waits.empty()) text += "; no connection from rank(s) " + waits;
      for (const auto& h : dials)
        if (!h.done)
          text += "; rank " + std::to_string(h.peer) + " at " + h.remote + ": " +
                  (h.last_error.empty() ? "no handshake yet" : h.last_error);
      throw CollectiveError(text);
    }
    for (auto& h : dials)
      if (!h.done && !h.socket.valid() && now >= h.redial_at) dial(h);
    for (auto& h : accepts)
      if (!h.done && now >= h.limit)
        refuse(h, "sent no complete handshake within " + std::to_string(kHandshakeLimit.count()) + " ms");
    std::erase_if(accepts, [](const Handshake& h) { return h.done; });

    auto wake = deadline;
    fds.clear();
    polled.clear();
    if (listener_.valid() && missing() > 0) {
      fds.push_back({listener_.fd(), POLLIN, 0});
      polled.push_back(nullptr);
    }
    auto watch = [&](Handshake& h) {
      short events = 0;
      if (h.connecting || h.out_sent < h.out.size()) events |= POLLOUT;
      if (!h.connecting && h.in.size() < h.in_want) events |= POLLIN;
      fds.push_back({h.socket.fd(), events, 0});
      polled.push_back(&h);
    };
    for (auto& h : dials) {
      if (h.done) continue;
      if (h.socket.valid()) {
        watch(h);
      } else {
        wake = std::min(wake, h.redial_at);
      }
    }
    for (auto& h : accepts) {
      watch(h);
      wake = std::min(wake, h.limit);
    }
    auto wait = std::chrono::ceil<milliseconds>(wake - Clock::now()).count();
    int n = ::poll(fds.data(), fds.size(), static_cast<int>(std::clamp<long long>(wait, 0, 60000)));
    if (n < 0 && errno != EINTR) throw CollectiveError(where("join") + "poll failed: " + errno_text(errno));
    if (n <= 0) continue;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      if (polled[i] == nullptr) {
        for (;;) {
          int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) break;
            throw CollectiveError(where("join") + "cannot accept connections: " + errno_text(errno));
          }
          set_no_delay(fd);
          Handshake h;
          h.socket.reset(fd);
          h.inbound = true;
          h.remote = peer_endpoint(fd);
          h.limit = Clock::now() + std::min(kHandshakeLimit, op_timeout_);
          random_bytes(h.challenge.data(), h.challenge.size());
          h.out.assign(h.challenge.begin(), h.challenge.end());
          h.in_want = kResponseBytes;
          accepts.push_back(std::move(h));
          advance_inbound(accepts.back());  // sends the challenge
        }
      } else if (polled[i]->inbound) {
        advance_inbound(*polled[i]);
      } else {
        advance_outbound(*polled[i], fds[i].revents);
      }
    }
    // Pointers into `accepts` stay valid above: accepting appends, and a deque's
    // push_back keeps references. Now trim it.
    std::erase_if(accepts, [](const Handshake& h) { return h.done; });
    while (accepts.size() > kMaxPendingHandshakes) {
      refuse(accepts.front(), "too many handshakes pending at once; this one is the oldest");
      accepts.pop_front();
    }
  }
  for (auto& h : accepts)
    if (!h.done) refuse(h, "the group formed before it completed a handshake");
  listener_.reset();
}

void TcpBackend::dial(Handshake& h) {
  h.connecting = h.responded = false;
  h.out.clear();
  h.out_sent = 0;
  h.in.clear();
  h.in_want = 0;
  Socket s(::socket(h.address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!s.valid()) return redial(h, "cannot create a socket: " + errno_text(errno));
  if (::connect(s.fd(), reinterpret_cast<const sockaddr*>(&h.address), h.address_length) != 0 && errno != EINPROGRESS)
    return redial(h, "cannot connect: " + errno_text(errno));
  set_no_delay(s.fd());
  h.socket = std::move(s);
  h.connecting = true;  // finished (or failed) once writable
}

void TcpBackend::redial(Handshake& h, const std::string& why) {
  h.socket.reset();
  h.last_error = why;
  h.redial_at = Clock::now() + kRedialDelay;
}

// Sends what is queued and reads up to `in_want` bytes, never more. Returns why the
// connection failed, or "".
std::string TcpBackend::pump_handshake(Handshake& h) {
  while (h.out_sent < h.out.size()) {
    ssize_t n =
        ::send(h.socket.fd(), h.out.data() + h.out_sent, h.out.size() - h.out_sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return "send failed during the handshake: " + errno_text(errno);
    }
    h.out_sent += static_cast<size_t>(n);
  }
  while (h.in.size() < h.in_want) {
    uint8_t buffer[kResponseBytes];
    size_t want = std::min(sizeof buffer, h.in_want - h.in.size());
    ssize_t n = ::recv(h.socket.fd(), buffer, want, MSG_DONTWAIT);
    if (n == 0) return "closed the connection during the handshake";
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return "receive failed during the handshake: " + errno_text(errno);
    }
    h.in.insert(h.in.end(), buffer, buffer + n);
  }
  return "";
}

void TcpBackend::advance_outbound(Handshake& h, short revents) {
  if (h.connecting) {
    if ((revents & (POLLOUT | POLLERR | POLLHUP)) == 0) return;
    if (int err = socket_error(h.socket.fd()); err != 0) return redial(h, "cannot connect: " + errno_text(err));
    h.connecting = false;
    h.in_want = kNonceBytes;  // the challenge
  }
  if (std::string why = pump_handshake(h); !why.empty()) return redial(h, why);
  if (!h.responded && h.in.size() == kNonceBytes) {
    std::copy(h.in.begin(), h.in.end(), h.challenge.begin());
    random_bytes(h.nonce.data(), h.nonce.size());
    Mac mac = connector_mac(secret_, h.challenge, rank_, h.peer, h.nonce);
    auto me = rank_bytes(rank_);
    h.out.assign(me.begin(), me.end());
    h.out.insert(h.out.end(), h.nonce.begin(), h.nonce.end());
    h.out.insert(h.out.end(), mac.begin(), mac.end());
    h.out_sent = 0;
    h.in.clear();
    h.in_want = kReplyBytes;
    h.responded = true;
    if (std::string why = pump_handshake(h); !why.empty()) return redial(h, why);
  }
  if (h.responded && h.in.size() == kReplyBytes) {
    if (h.in[0] != kReplyOk || !same_mac(h.in.data() + 1, acceptor_mac(secret_, h.nonce, h.peer, rank_, h.challenge)))
      throw CollectiveError(where("join") + "the listener at " + h.remote + " (published by rank " +
                            std::to_string(h.peer) + ") failed authentication: it does not hold this group's secret");
    established(h);
  }
}

void TcpBackend::advance_inbound(Handshake& h) {
  if (std::string why = pump_handshake(h); !why.empty()) return refuse(h, why);
  if (!h.replied && h.in.size() == kResponseBytes) {
    uint8_t extra = 0;
    if (::recv(h.socket.fd(), &extra, 1, MSG_PEEK | MSG_DONTWAIT) > 0)
      return refuse(h, "sent more bytes than a handshake");
    const uint32_t claimed = get_u32(h.in.data());
    if (claimed <= static_cast<uint32_t>(rank_) || claimed >= static_cast<uint32_t>(world_))
      return refuse(h, "claims rank " + std::to_string(claimed) + ", which does not connect to rank " +
                           std::to_string(rank_) + " (ranks " + std::to_string(rank_ + 1) + ".." +
                           std::to_string(world_ - 1) + " do)");
    const int peer = static_cast<int>(claimed);
    std::copy(h.in.begin() + 4, h.in.begin() + 4 + kNonceBytes, h.nonce.begin());
    if (!same_mac(h.in.data() + 4 + kNonceBytes, connector_mac(secret_, h.challenge, peer, rank_, h.nonce)))
      return refuse(h, "wrong MAC for rank " + std::to_string(peer) + " (it does not hold this group's secret)");
    if (claimed_[peer]) return refuse(h, "rank " + std::to_string(peer) + " is connected already");
    claimed_[peer] = true;
    h.peer = peer;
    h.replied = true;
    Mac mac = acceptor_mac(secret_, h.nonce, rank_, peer, h.challenge);
    h.out.assign(1, kReplyOk);
    h.out.insert(h.out.end(), mac.begin(), mac.end());
    h.out_sent = 0;
    h.in.clear();
    h.in_want = 0;
    if (std::string why = pump_handshake(h); !why.empty()) {
      claimed_[peer] = false;
      return refuse(h, why);
    }
  }
  if (h.replied && h.out_sent == h.out.size()) established(h);
}

void TcpBackend::refuse(Handshake& h, const std::string& why) {
  if (refusals_ < kMaxLoggedRefusals) {
    std::string line = "gantry: " + where("join") + "refused a collective connection from " + h.remote + ": " + why;
    if (refusals_ + 1 == kMaxLoggedRefusals) line += " (later refusals are not logged)";
    line += "\n";
    [[maybe_unused]] ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());  // one write: one line
  }
  ++refusals_;
  h.socket.reset();
  h.done = true;
}

void TcpBackend::established(Handshake& h) {
  set_keep_alive(h.socket.fd());
  peers_[h.peer] = std::move(h.socket);
  h.done = true;
}

// ---- Transfers ---------------------------------------------------------------------------

template <typename Body>
void TcpBackend::run(const char* op, Body&& body) {
  throw_if_failed(op);
  deadline_ = Clock::now() + std::min(op_timeout_, kLongestWait);
  try {
    body();
  } catch (const OpFailure& f) {
    throw CollectiveError(where(op) + fail_group(f.reason));
  } catch (const CollectiveError& e) {
    throw CollectiveError(where(op) + fail_group(e.what()));
  } catch (const std::exception& e) {
    throw CollectiveError(where(op) + fail_group(e.what()));
  }
}

void TcpBackend::throw_if_failed(const char* op) {
  if (!failed_.load()) return;
  std::lock_guard<std::mutex> lock(mu_);
  throw CollectiveError(where(op) + failure_);
}

// Fails the group with `reason` unless it failed already, shutting every connection down
// (the peers' transfers see it at once; a poll of this rank's op thread wakes). Returns the
// first failure's reason. Thread-safe.
std::string TcpBackend::fail_group(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!failed_.load()) {
    failure_ = reason;
    failed_.store(true);
    for (auto& s : peers_)
      if (s.valid()) ::shutdown(s.fd(), SHUT_RDWR);
  }
  return failure_;
}

Outflow TcpBackend::outflow(FrameOp op, int peer) {
  Outflow f;
  f.peer = peer;
  f.op_code = op;
  f.sequence = frames_sent_[peer]++;
  return f;
}

Inflow TcpBackend::inflow(FrameOp op, int peer) {
  Inflow f;
  f.peer = peer;
  f.op_code = op;
  f.sequence = frames_received_[peer]++;
  f.staging = staging_.get();
  return f;
}

void TcpBackend::connection_lost(int peer, int err) const {
  if (err == 0)
    throw OpFailure{"rank " + std::to_string(peer) + " closed its connection (it failed, aborted or left the group)"};
  throw OpFailure{"the connection to rank " + std::to_string(peer) + " broke: " + errno_text(err) +
                  " (the rank failed, aborted or left the group)"};
}

void TcpBackend::check_header(const Inflow& f) const {
  const uint8_t* got = f.header.data();
  const std::string from = "rank " + std::to_string(f.peer);
  const std::string expected = frame_op_name(static_cast<uint8_t>(f.op_code)) + " frame #" +
                               std::to_string(f.sequence) + " of " + std::to_string(f.total) + " bytes";
  if (get_u32(got) != kFrameMagic)
    throw OpFailure{from + " sent bytes that are not a gantry collective frame where this rank expected " + expected};
  const uint64_t sequence = get_u64(got + 8), bytes = get_u64(got + 16);
  if (got[4] != static_cast<uint8_t>(f.op_code) || sequence != f.sequence || bytes != f.total)
    throw OpFailure{from + " sent " + frame_op_name(got[4]) + " frame #" + std::to_string(sequence) + " of " +
                    std::to_string(bytes) + " bytes where this rank expected " + expected +
                    ": the ranks called different ops or sizes"};
}

Pumped TcpBackend::pump_out(Outflow& f) {
  const int fd = peers_[f.peer].fd();
  while (f.piece < f.pieces.size() && f.piece_offset == f.pieces[f.piece].bytes) {
    ++f.piece;
    f.piece_offset = 0;
  }
  iovec iov[2];
  int parts = 0;
  if (f.header_sent < kFrameHeaderBytes)
    iov[parts++] = {f.header.data() + f.header_sent, kFrameHeaderBytes - f.header_sent};
  const size_t ready = f.ready();
  if (f.sent < ready && f.piece < f.pieces.size()) {
    const Piece& p = f.pieces[f.piece];
    iov[parts++] = {const_cast<uint8_t*>(p.data) + f.piece_offset, std::min(ready - f.sent, p.bytes - f.piece_offset)};
  }
  if (parts == 0) return Pumped::kIdle;
  msghdr message{};
  message.msg_iov = iov;
  message.msg_iovlen = parts;
  ssize_t n = ::sendmsg(fd, &message, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EINTR) return Pumped::kMoved;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Pumped::kBlocked;
    connection_lost(f.peer, errno);
  }
  auto moved = static_cast<size_t>(n);
  const size_t header_part = std::min(moved, kFrameHeaderBytes - f.header_sent);
  f.header_sent += header_part;
  moved -= header_part;
  f.sent += moved;
  f.piece_offset += moved;
  return Pumped::kMoved;
}

Pumped TcpBackend::pump_in(Inflow& f) {
  const int fd = peers_[f.peer].fd();
  auto receive = [&](void* to, size_t bytes) -> size_t {
    ssize_t n = ::recv(fd, to, bytes, MSG_DONTWAIT);
    if (n > 0) return static_cast<size_t>(n);
    if (n == 0) connection_lost(f.peer, 0);
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    connection_lost(f.peer, errno);
  };
  if (f.header_got < kFrameHeaderBytes) {
    // The header alone, checked before any payload byte lands.
    size_t n = receive(f.header.data() + f.header_got, kFrameHeaderBytes - f.header_got);
    if (n == 0) return Pumped::kBlocked;
    f.header_got += n;
    if (f.header_got == kFrameHeaderBytes) check_header(f);
    return Pumped::kMoved;
  }
  while (f.landing < f.landings.size() && f.landing_offset == f.landings[f.landing].bytes) {
    ++f.landing;
    f.landing_offset = 0;
  }
  if (f.landing == f.landings.size()) return Pumped::kIdle;
  const Landing& l = f.landings[f.landing];
  const size_t want = l.bytes - f.landing_offset;
  if (l.local == nullptr) {
    size_t n = receive(l.dst + f.landing_offset, want);
    if (n == 0) return Pumped::kBlocked;
    f.landing_offset += n;
    f.received += n;
    f.processed = f.received;
    return Pumped::kMoved;
  }
  size_t n = receive(f.staging + f.staged, std::min(want, kStagingBytes - f.staged));
  if (n == 0) return Pumped::kBlocked;
  const size_t es = element_size(f.type);
  const size_t start = f.landing_offset - f.staged;  // the landing's bytes already reduced
  f.staged += n;
  f.landing_offset += n;
  f.received += n;
  const size_t whole = f.staged / es * es;
  if (whole > 0) {
    reduce_pair(l.dst + start, l.local + start, f.staging, whole / es, f.type, f.op);
    if (l.finish) divide(l.dst + start, whole / es, f.type, world_);
    std::memmove(f.staging, f.staging + whole, f.staged - whole);
    f.staged -= whole;
    f.processed += whole;
  }
  return Pumped::kMoved;
}

// Moves every flow to its end: sends and receives whatever the sockets take, then polls.
// At most one Outflow and one Inflow per peer.
void TcpBackend::transfer(std::span<Outflow* const> outs, std::span<Inflow* const> ins) {
  struct Link {
    int peer;
    Outflow* out = nullptr;
    Inflow* in = nullptr;
    bool readable = true;  // worth a recv: nothing said otherwise since the last EAGAIN
    bool writable = true;
  };
  std::vector<Link> links;
  auto link_of = [&](int peer) -> Link& {
    for (auto& l : links)
      if (l.peer == peer) return l;
    return links.emplace_back(Link{peer});
  };
  for (Outflow* f : outs) {
    link_of(f->peer).out = f;
    f->header = encode_header(f->op_code, f->sequence, f->total);
  }
  for (Inflow* f : ins) link_of(f->peer).in = f;

  std::vector<pollfd> fds;
  std::vector<Link*> polled;
  for (;;) {
    for (bool moved = true; moved;) {
      moved = false;
      for (auto& l : links) {
        if (l.in != nullptr && !l.in->done() && l.readable) {
          Pumped p = pump_in(*l.in);
          moved |= p == Pumped::kMoved;
          if (p == Pumped::kBlocked) l.readable = false;
        }
        if (l.out != nullptr && !l.out->done() && l.writable && l.out->sendable()) {
          Pumped p = pump_out(*l.out);
          moved |= p == Pumped::kMoved;
          if (p == Pumped::kBlocked) l.writable = false;
        }
      }
    }
    fds.clear();
    polled.clear();
    std::string awaited;
    for (auto& l : links) {
      const bool in_pending = l.in != nullptr && !l.in->done();
      const bool out_pending = l.out != nullptr && !l.out->done();
      if (!in_pending && !out_pending) continue;
      short events = 0;
      if (in_pending) events |= POLLIN;
      if (out_pending && l.out->sendable()) events |= POLLOUT;
      fds.push_back({peers_[l.peer].fd(), events, 0});
      polled.push_back(&l);
      awaited += (awaited.empty() ? "rank " : ", rank ") + std::to_string(l.peer);
    }
    if (fds.empty()) return;
    if (failed_.load()) throw OpFailure{"the group failed"};  // run() reports the first reason
    auto wait = std::chrono::ceil<milliseconds>(deadline_ - Clock::now()).count();
    if (wait <= 0)
      throw OpFailure{"timed out after " + std::to_string(op_timeout_.count()) + " ms waiting for " + awaited};
    int n = ::poll(fds.data(), fds.size(), static_cast<int>(std::min<long long>(wait, 60000)));
    if (n < 0 && errno != EINTR) throw OpFailure{"poll failed: " + errno_text(errno)};
    if (failed_.load()) throw OpFailure{"the group failed"};
    for (size_t i = 0; i < fds.size() && n > 0; ++i) {
      const short revents = fds[i].revents;
      Link& l = *polled[i];
      if (revents & (POLLIN | POLLHUP | POLLERR)) l.readable = true;
      if (revents & (POLLOUT | POLLHUP | POLLERR)) l.writable = true;
      // A broken connection with nothing to read or send now would poll hot: fail it.
      if ((revents & (POLLHUP | POLLERR)) && (l.in == nullptr || l.in->done()) &&
          (l.out == nullptr || !l.out->sendable()))
        connection_lost(l.peer, socket_error(peers_[l.peer].fd()));
    }
  }
}

// ---- Ops ---------------------------------------------------------------------------------

// The ring over `count` elements of `type` in world_ blocks (block b: elements
// [count*b/W, count*(b+1)/W)). Reduce-scatter: in step s (0..W-2) rank r sends block
// r-1-s to r+1 and receives block r-2-s from r-1, which it combines with its `input`
// block into `acc`; afterwards block r of `acc` holds every rank's contribution (divided
// by W for kAvg). Allgather: in step t (0..W-2) rank r sends block r-t (its own first)
// and receives block r-1-t into `acc`. Step 0 of the reduce-scatter sends from `input`,
// everything else from `acc` (which may be `input`).
void TcpBackend::ring(FrameOp op, const uint8_t* input, uint8_t* acc, size_t count, DataType type, ReduceOp reduce_op,
                      bool reduce, bool gather) {
  const size_t es = element_size(type);
  auto offset = [&](int b) { return count * static_cast<size_t>(b) / world_ * es; };
  auto length = [&](int b) { return offset(b + 1) - offset(b); };
  const int next = mod(rank_ + 1), prev = mod(rank_ - 1);
  Outflow out = outflow(op, next);
  Inflow in = inflow(op, prev);
  in.type = type;
  in.op = reduce_op == ReduceOp::kAvg ? ReduceOp::kSum : reduce_op;
  if (reduce) {
    for (int s = 0; s < world_ - 1; ++s) {
      const int send_block = mod(rank_ - 1 - s), recv_block = mod(rank_ - 2 - s);
      out.add({(s == 0 ? input : acc) + offset(send_block), length(send_block)});
      in.add({acc + offset(recv_block), length(recv_block), input + offset(recv_block),
              reduce_op == ReduceOp::kAvg && s == world_ - 2});
    }
  }
  if (gather) {
    for (int t = 0; t < world_ - 1; ++t) {
      const int send_block = mod(rank_ - t), recv_block = mod(rank_ - 1 - t);
      out.add({acc + offset(send_block), length(send_block)});
      in.add({acc + offset(recv_block), length(recv_block)});
    }
  }
  out.feeder = &in;
  out.head = out.pieces.front().bytes;
  Outflow* outs[] = {&out};
  Inflow* ins[] = {&in};
  transfer(outs, ins);
}

void TcpBackend::allreduce(void* data, size_t count, DataType type, ReduceOp op) {
  run("allreduce", [&] {
    if (count == 0 || world_ == 1) return;  // a world of one: the reduction of one buffer
    if (is_half(type)) {
      std::vector<float> acc = widen(data, count, type);
      auto* bytes = reinterpret_cast<uint8_t*>(acc.data());
      ring(FrameOp::kAllreduce, bytes, bytes, count, DataType::kFloat32, op, true, true);
      narrow(acc.data(), data, count, type);
      return;
    }
    ring(FrameOp::kAllreduce, bytes_of(data), bytes_of(data), count, type, op, true, true);
  });
}

void TcpBackend::reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op) {
  run("reduce_scatter", [&] {
    if (count == 0) return;
    if (world_ == 1) {
      if (recv != send) std::memmove(recv, send, count * element_size(type));
      return;
    }
    const DataType acc_type = is_half(type) ? DataType::kFloat32 : type;
    const size_t block = count * element_size(acc_type);
    std::vector<float> widened;
    const uint8_t* input = bytes_of(send);
    if (is_half(type)) {
      widened = widen(send, count * world_, type);
      input = reinterpret_cast<const uint8_t*>(widened.data());
    }
    auto acc = std::make_unique_for_overwrite<uint8_t[]>(block * world_);
    ring(FrameOp::kReduceScatter, input, acc.get(), count * world_, acc_type, op, true, false);
    const uint8_t* mine = acc.get() + rank_ * block;
    if (is_half(type)) {
      narrow(reinterpret_cast<const float*>(mine), recv, count, type);
    } else {
      std::memcpy(recv, mine, block);
    }
  });
}

void TcpBackend::allgather(const void* send, void* recv, size_t count, DataType type) {
  run("allgather", [&] {
    const size_t bytes = count * element_size(type);
    if (bytes == 0) return;
    uint8_t* own = bytes_of(recv) + rank_ * bytes;
    if (own != send) std::memmove(own, send, bytes);  // `send` may be this rank's block of `recv`
    if (world_ == 1) return;
    ring(FrameOp::kAllgather, nullptr, bytes_of(recv), count * world_, type, ReduceOp::kSum, false, true);
  });
}

// The ring's reduce-scatter leaves block r on rank r; the root gathers the blocks. The
// others reduce into a scratch copy, so their `data` stays unchanged.
void TcpBackend::reduce(void* data, size_t count, DataType type, ReduceOp op, int root) {
  check_rank("reduce", "root", root, true);
  run("reduce", [&] {
    if (count == 0 || world_ == 1) return;
    const DataType acc_type = is_half(type) ? DataType::kFloat32 : type;
    const size_t es = element_size(acc_type);
    std::vector<float> widened;
    std::unique_ptr<uint8_t[]> scratch;
    const uint8_t* input = bytes_of(data);
    uint8_t* acc = bytes_of(data);
    if (is_half(type)) {
      widened = widen(data, count, type);
      acc = reinterpret_cast<uint8_t*>(widened.data());
      input = acc;
    } else if (rank_ != root) {
      scratch = std::make_unique_for_overwrite<uint8_t[]>(count * es);
      acc = scratch.get();
    }
    ring(FrameOp::kReduce, input, acc, count, acc_type, op, true, false);
    auto offset = [&](int b) { return count * static_cast<size_t>(b) / world_ * es; };
    if (rank_ != root) {
      Outflow out = outflow(FrameOp::kReduce, root);
      out.add({acc + offset(rank_), offset(rank_ + 1) - offset(rank_)});
      Outflow* outs[] = {&out};
      transfer(outs, {});
      return;
    }
    std::vector<Inflow> ins;
    ins.reserve(world_ - 1);
    std::vector<Inflow*> pointers;
    for (int p = 0; p < world_; ++p) {
      if (p == root) continue;
      ins.push_back(inflow(FrameOp::kReduce, p));
      ins.back().add({acc + offset(p), offset(p + 1) - offset(p)});
      pointers.push_back(&ins.back());
    }
    transfer({}, pointers);
    if (is_half(type)) narrow(widened.data(), data, count, type);
  });
}

// A chain from the root: each rank forwards the bytes it has received at once.
void TcpBackend::broadcast(void* data, size_t count, DataType type, int root) {
  check_rank("broadcast", "root", root, true);
  run("broadcast", [&] {
    const size_t bytes = count * element_size(type);
    if (bytes == 0 || world_ == 1) return;
    const int next = mod(rank_ + 1), prev = mod(rank_ - 1);
    Inflow in;
    Outflow out;
    std::vector<Inflow*> ins;
    std::vector<Outflow*> outs;
    if (rank_ != root) {
      in = inflow(FrameOp::kBroadcast, prev);
      in.add({bytes_of(data), bytes});
      ins.push_back(&in);
    }
    if (next != root) {
      out = outflow(FrameOp::kBroadcast, next);
      out.add({bytes_of(data), bytes});
      if (rank_ != root) out.feeder = &in;
      outs.push_back(&out);
    }
    transfer(outs, ins);
  });
}

// Dissemination: in round k (1, 2, 4, ...) rank r signals r+k and waits for r-k.
void TcpBackend::barrier() {
  run("barrier", [&] {
    for (int k = 1; k < world_; k *= 2) {
      Outflow out = outflow(FrameOp::kBarrier, mod(rank_ + k));
      Inflow in = inflow(FrameOp::kBarrier, mod(rank_ - k));
      Outflow* outs[] = {&out};
      Inflow* ins[] = {&in};
      transfer(outs, ins);
    }
  });
}

void TcpBackend::send(const void* data, size_t count, DataType type, int to) {
  check_rank("send", "destination", to, false);
  run("send", [&] {
    const size_t bytes = count * element_size(type);
    if (bytes == 0) return;
    Outflow out = outflow(FrameOp::kPointToPoint, to);
    out.add({bytes_of(data), bytes});
    Outflow* outs[] = {&out};
    transfer(outs, {});
  });
}

void TcpBackend::recv(void* data, size_t count, DataType type, int from) {
  check_rank("recv", "source", from, false);
  run("recv", [&] {
    const size_t bytes = count * element_size(type);
    if (bytes == 0) return;
    Inflow in = inflow(FrameOp::kPointToPoint, from);
    in.add({bytes_of(data), bytes});
    Inflow* ins[] = {&in};
    transfer({}, ins);
  });
}

}  // namespace

std::unique_ptr<Backend> make_tcp_backend(const BackendContext& context) {
  return std::make_unique<TcpBackend>(context);
}

}  // namespace gantry::collective::detail
