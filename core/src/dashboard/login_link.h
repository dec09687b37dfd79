#pragma once

#include <cstdint>
#include <string>

namespace gantry::internal {

/// One-time login links for the dashboard: "EXPIRY.NONCE.MAC", where MAC is the
/// HMAC-SHA256 of "EXPIRY.NONCE" keyed with the cluster token. Whoever holds the token can
/// mint one (`gantry dashboard`) without asking the head; the head accepts each nonce once.
std::string make_login_link(const std::string& token, int64_t expires_unix);
/// Checks a link's MAC and expiry at `now_unix`; on success sets `nonce`. Constant-time MAC
/// comparison. Does not check reuse (the server remembers nonces it took).
bool check_login_link(const std::string& token, const std::string& link, int64_t now_unix, std::string* nonce,
                      int64_t* expires_unix);
/// Constant-time string equality (for tokens).
bool equal_secrets(const std::string& a, const std::string& b);
/// `n` random bytes as hex, from the system's CSPRNG.
std::string random_hex(size_t n);

}  // namespace gantry::internal
