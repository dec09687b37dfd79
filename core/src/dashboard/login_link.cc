#include "dashboard/login_link.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <stdexcept>
#include <vector>

namespace gantry::internal {
namespace {

std::string to_hex(const unsigned char* data, size_t n) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    out += kDigits[data[i] >> 4];
    out += kDigits[data[i] & 15];
  }
  return out;
}

std::string mac_of(const std::string& token, const std::string& message) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &len);
  return to_hex(mac, len);
}

}  // namespace

std::string random_hex(size_t n) {
  std::vector<unsigned char> bytes(n);
  if (RAND_bytes(bytes.data(), static_cast<int>(n)) != 1) throw std::runtime_error("the system's random source failed");
  return to_hex(bytes.data(), n);
}

bool equal_secrets(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string make_login_link(const std::string& token, int64_t expires_unix) {
  std::string body = std::to_string(expires_unix) + "." + random_hex(16);
  return body + "." + mac_of(token, "gantry-dashboard-login:" + body);
}

bool check_login_link(const std::string& token, const std::string& link, int64_t now_unix, std::string* nonce,
                      int64_t* expires_unix) {
  size_t a = link.find('.');
  size_t b = a == std::string::npos ? a : link.find('.', a + 1);
  if (b == std::string::npos || link.size() > 256) return false;
  std::string expiry = link.substr(0, a);
  if (expiry.empty() || expiry.size() > 12 || expiry.find_first_not_of("0123456789") != std::string::npos) return false;
  std::string body = link.substr(0, b);
  if (!equal_secrets(mac_of(token, "gantry-dashboard-login:" + body), link.substr(b + 1))) return false;
  int64_t expires = std::stoll(expiry);
  if (expires < now_unix) return false;
  *nonce = link.substr(a + 1, b - a - 1);
  *expires_unix = expires;
  return true;
}

}  // namespace gantry::internal
