#include "remote/http_device.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "io/block_cache.h"
#include "remote/cache_admin.h"
#include "util/log.h"

namespace udm::remote {
namespace {

std::mutex g_live_mu;
std::multimap<std::string, std::weak_ptr<HttpDevice>> g_live;

bool strong_etag(const std::string& e) { return !e.empty() && e.rfind("W/", 0) != 0; }

// Reads at least this large get no readahead (do_read).
constexpr uint64_t kReadaheadBelow = 128u << 10;

// Set on a prefetch thread: its reads are not foreground I/O.
thread_local bool tl_prefetching = false;

std::shared_ptr<HttpDevice> live_device(const std::string& spec) {
  std::lock_guard lk(g_live_mu);
  auto [a, z] = g_live.equal_range(spec);
  for (auto it = a; it != z; ++it)
    if (auto d = it->second.lock()) return d;
  return nullptr;
}

}  // namespace

bool is_loopback_host(const std::string& authority) {
  std::string h = authority;
  if (!h.empty() && h[0] == '[') {
    h = h.substr(1, h.find(']') - 1);
  } else if (auto c = h.rfind(':'); c != std::string::npos) {
    h = h.substr(0, c);
  }
  return h == "localhost" || h == "::1" || h.rfind("127.", 0) == 0;
}

std::string OciRef::blob_url() const {
  return fmt::format("{}://{}/v2/{}/blobs/sha256:{}", plain_http ? "http" : "https", authority, repo, digest_hex);
}

Result<OciRef> parse_oci_blob_ref(const std::string& spec) {
  auto bad = [&](const std::string& why) {
    return Invalid(spec + ": " + why + " (want oci://HOST[:PORT]/REPO@sha256:HEX)");
  };
  if (spec.rfind("oci://", 0) != 0) return bad("not an oci:// reference");
  std::string rest = spec.substr(6);
  size_t slash = rest.find('/');
  size_t at = rest.rfind('@');
  if (slash == std::string::npos || slash == 0) return bad("no registry host");
  if (at == std::string::npos || at < slash) return bad("no @sha256: digest");
  OciRef r;
  r.authority = rest.substr(0, slash);
  for (auto& c : r.authority) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (char c : r.authority)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != ':' && c != '[' && c != ']')
      return bad("bad registry host");
  r.repo = rest.substr(slash + 1, at - slash - 1);
  if (r.repo.empty() || r.repo.front() == '/' || r.repo.back() == '/') return bad("bad repository name");
  for (char c : r.repo)
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '.' ||
          c == '_' || c == '-' || c == '/'))
      return bad("bad repository name (lowercase letters, digits, . _ - /)");
  std::string dg = rest.substr(at + 1);
  if (dg.rfind("sha256:", 0) != 0) return bad("only sha256 digests are supported");
  r.digest_hex = dg.substr(7);
  if (r.digest_hex.size() != 64) return bad("digest must be 64 hex digits");
  for (char c : r.digest_hex)
    if (!std::isxdigit(static_cast<unsigned char>(c)) || std::isupper(static_cast<unsigned char>(c)))
      return bad("digest must be 64 lowercase hex digits");
  auto cfg = config();
  bool insecure = std::find(cfg.insecure_registries.begin(), cfg.insecure_registries.end(), r.authority) !=
                  cfg.insecure_registries.end();
  r.plain_http = insecure || is_loopback_host(r.authority);
  return r;
}

Result<std::shared_ptr<HttpDevice>> HttpDevice::open(const std::string& spec, const std::string& url,
                                                     std::shared_ptr<RegistryAuth> auth, const std::string& digest_hex) {
  std::shared_ptr<HttpDevice> d(new HttpDevice());
  d->spec_ = spec;
  d->url_ = url;
  d->auth_ = std::move(auth);
  d->digest_hex_ = digest_hex;
  d->cfg_ = config();
  d->bs_ = d->cfg_.block_size;
  d->on_error_ = d->cfg_.on_error == OnError::kQueue ? 1 : 0;
  if (d->cfg_.cache_dir != "none" && !d->cfg_.cache_dir.empty()) {
    auto s = CacheStore::open(d->cfg_.cache_dir, d->cfg_.cache_size);
    if (!s.ok()) return s.status().context(spec + ": --cache-dir");
    d->store_ = *s;
  }
  std::string key;
  bool known = false;
  if (!digest_hex.empty() && d->store_) {
    // Content-addressed: a blob cached by an earlier run needs no request to open.
    key = "sha256:" + digest_hex;
    auto o = d->store_->existing(key);
    if (o) {
      d->obj_ = o;
      d->size_ = o->size();
      d->bs_ = o->block_size();
      known = true;
    }
  }
  if (!known) {
    UDM_TRY(d->probe());
    if (d->store_) {
      if (digest_hex.empty()) {
        // Plain URL: the cached copy belongs to this URL with this validator and size.
        std::string v = !d->etag_.empty() ? "etag " + d->etag_ : !d->last_modified_.empty() ? "lm " + d->last_modified_ : "none";
        key = fmt::format("url {}\n{}\nsize {}", url, v, d->size_);
      }
      // An earlier run's copy keeps the block size it was cached with.
      if (auto o = d->store_->existing(key); o && o->size() == d->size_) {
        d->obj_ = o;
        d->bs_ = o->block_size();
      } else {
        auto n = d->store_->object(key, d->size_, d->bs_);
        if (!n.ok()) return n.status().context(spec + ": cache");
        d->obj_ = *n;
      }
    }
  }
  d->nblocks_ = (d->size_ + d->bs_ - 1) / d->bs_;
  if (!d->obj_) d->mem_owner_ = BlockCache::new_owner();
  std::lock_guard lk(g_live_mu);
  for (auto it = g_live.begin(); it != g_live.end();) it = it->second.expired() ? g_live.erase(it) : std::next(it);
  g_live.emplace(spec, d);
  return d;
}

HttpDevice::~HttpDevice() {
  stop_prefetch();
  if (obj_) {
    std::lock_guard lk(pin_mu_);
    for (auto [first, count] : pins_) obj_->unpin(first, count);
  }
  if (mem_owner_) BlockCache::shared()->drop_owner(mem_owner_);
}

DeviceCaps HttpDevice::caps() const {
  DeviceCaps c;
  c.read_only = true;
  c.can_write_zeroes = false;
  c.can_flush = true;
  return c;
}

uint64_t HttpDevice::bytes_cached() const {
  if (!obj_) return 0;
  return std::min<uint64_t>(obj_->present_count() * bs_, size_);
}

void HttpDevice::do_keep_cached(uint64_t offset, uint64_t length) {
  if (!obj_) return;
  uint64_t first = offset / bs_, last = (offset + length - 1) / bs_;
  std::lock_guard lk(pin_mu_);
  for (auto [f, c] : pins_)
    if (f == first && c == last - first + 1) return;  // the same range again (a reader reopened)
  obj_->pin(first, last - first + 1);
  pins_.push_back({first, last - first + 1});
}

Result<LocalStateHome> HttpDevice::local_state_home() const {
  if (cfg_.cache_dir.empty() || cfg_.cache_dir == "none")
    return Status::Error(EINVAL, "--cache-dir is none (nothing persists)");
  if (!obj_) {
    auto o = cache_owner(cfg_.cache_dir);
    return Status::Error(EBUSY, fmt::format("cache dir {} is owned by {} (this process keeps nothing there)",
                                            cfg_.cache_dir,
                                            o ? fmt::format("pid {} ({})", o->pid, o->command) : "another process"));
  }
  return LocalStateHome{store_->dir() + "/" + obj_->id() + ".overlay", obj_->key()};
}

uint64_t HttpDevice::bytes_pinned() const {
  if (!obj_) return 0;
  uint64_t n = 0;
  for (uint64_t b = 0; b < nblocks_; b++)
    if (obj_->pinned(b)) n += std::min<uint64_t>(bs_, size_ - b * bs_);
  return n;
}

std::string HttpDevice::stats_json() const {
  nlohmann::json j{{"url", spec_},
                   {"size", size_},
                   {"bytes_fetched", stats_.bytes_fetched.load()},
                   {"bytes_cached", bytes_cached()},
                   {"requests", stats_.requests.load()},
                   {"retries", stats_.retries.load()},
                   {"errors", stats_.errors.load()},
                   {"cache_hits", stats_.cache_hits.load()},
                   {"bytes_pinned", bytes_pinned()},
                   {"http_version", [&] {
                      HttpReply r;
                      r.http_version = stats_.http_version.load();
                      return r.version_name();
                    }()},
                   {"persistent", obj_ != nullptr},
                   {"verified", obj_ && obj_->verified()},
                   {"state", stats_.waiting.load() > 0 ? "waiting" : "ok"},
                   {"waiting", stats_.waiting.load()},
                   {"retrying", troubled_.load()},
                   {"released", stats_.released.load()},
                   {"on_error", on_error() == OnError::kQueue ? "queue" : "fail"},
                   {"last_error", [&] {
                      std::lock_guard lk(err_mu_);
                      return last_error_;
                    }()}};
  return j.dump();
}

Result<HttpReply> HttpDevice::get_once(uint64_t off, uint64_t len, bool probe) {
  bool auth_tried = false, reresolved = false;
  std::string origin_auth = url_authority(url_);
  for (int hop = 0; hop < 10; hop++) {
    std::string url;
    bool redirected;
    {
      std::lock_guard lk(url_mu_);
      url = actual_url_.empty() ? url_ : actual_url_;
      redirected = !actual_url_.empty();
    }
    HttpRequest rq;
    rq.url = url;
    rq.has_range = true;
    rq.range_first = off;
    rq.range_last = off + len - 1;
    rq.max_body = len;
    if (!probe) {
      if (strong_etag(etag_)) rq.headers.push_back("If-Range: " + etag_);
      else if (!last_modified_.empty()) rq.headers.push_back("If-Range: " + last_modified_);
    }
    bool same_host = url_authority(url) == origin_auth;
    if (auth_ && same_host) {  // never send registry credentials to blob storage
      std::string h = auth_->header();
      if (!h.empty()) rq.headers.push_back(h);
    }
    stats_.requests++;
    HttpReply r = HttpClient::shared().perform(rq);
    if (!r.transport_ok() && !r.overflow) return r;
    if (r.status == 401 && auth_ && same_host && !auth_tried) {
      auth_tried = true;
      Status st = auth_->on_unauthorized(r.headers, url);
      if (!st.ok()) return st;
      continue;
    }
    if (r.status == 401) {
      return Status::Error(EACCES, fmt::format("{}: 401 unauthorized{}", url,
                                               auth_ ? " (new credentials refused)" : ""));
    }
    if ((r.status == 301 || r.status == 302 || r.status == 303 || r.status == 307 || r.status == 308) &&
        r.headers.count("location")) {
      std::string to = resolve_url(url, r.headers["location"]);
      if (to.empty() || (to.rfind("http://", 0) != 0 && to.rfind("https://", 0) != 0))
        return IoError(url + ": bad redirect to '" + r.headers["location"] + "'");
      if (url.rfind("https://", 0) == 0 && to.rfind("http://", 0) == 0)
        return IoError(url + ": refusing a redirect from https to plain http (" + to + ")");
      std::lock_guard lk(url_mu_);
      actual_url_ = to == url_ ? "" : to;
      continue;
    }
    if (redirected && !reresolved && (r.status == 403 || r.status == 404 || r.status == 410)) {
      // An expired presigned blob-storage URL: ask the origin again.
      reresolved = true;
      std::lock_guard lk(url_mu_);
      if (actual_url_ == url) actual_url_.clear();
      continue;
    }
    return r;
  }
  return IoError(url_ + ": too many redirects");
}

Result<std::vector<uint8_t>> HttpDevice::fetch(uint64_t off, uint64_t len, bool probe) {
  std::string what = fmt::format("{}: bytes {}-{}", url_, off, off + len - 1);
  static thread_local std::mt19937 rng(std::random_device{}());
  uint64_t release0;
  {
    std::lock_guard lk(wait_mu_);
    release0 = release_gen_;
  }
  // troubled: failed an attempt (counted in troubled_); queued: retries spent,
  // waiting under on-error queue (counted in stats_.waiting) - until it ends.
  bool troubled = false, queued = false;
  struct Leave {
    HttpDevice* d;
    bool &troubled, &queued;
    ~Leave() {
      if (troubled) d->troubled_--;
      if (queued) d->stats_.waiting--;
    }
  } leave{this, troubled, queued};
  for (int attempt = 0;; attempt++) {
    uint64_t retry0;
    {
      std::lock_guard lk(wait_mu_);
      retry0 = retry_gen_;
    }
    auto rr = get_once(off, len, probe);
    if (!rr.ok()) {
      stats_.errors++;
      return rr.status();
    }
    HttpReply& r = *rr;
    Status st;
    bool retry = false;
    std::optional<uint64_t> after;
    if (!r.transport_ok() && !(r.overflow && r.status != 206)) {
      if (r.overflow) {
        st = IoError(what + ": reply body longer than the range asked for");
      } else if (r.tls_verify_failed()) {
        // Not retried, never bypassed: the certificate is the server's identity.
        st = IoError(fmt::format("{}: TLS certificate not accepted: {} ({}){}", url_, r.curl_error, r.curl_code,
                                 cfg_.ca_file.empty() ? " (a private CA: --remote-ca FILE)"
                                                      : " (CA bundle --remote-ca " + cfg_.ca_file + ")"));
      } else {
        retry = true;
        st = IoError(what + ": " + r.describe());
      }
    } else if (retryable_status(r.status)) {
      retry = true;
      st = IoError(what + ": " + r.describe());
      if (r.headers.count("retry-after")) after = parse_retry_after(r.headers["retry-after"], time(nullptr), 60);
    } else if (probe) {
      if (r.status == 206) {
        auto cr = r.headers.count("content-range") ? parse_content_range(r.headers["content-range"]) : std::nullopt;
        if (!cr || cr->first != 0 || cr->last != 0 || !cr->total || r.body.size() != 1)
          st = IoError(url_ + ": probe bytes=0-0: bad reply (Content-Range '" +
                       (r.headers.count("content-range") ? r.headers["content-range"] : "") + "')");
        if (st.ok()) {
          size_ = *cr->total;
          etag_ = r.headers.count("etag") ? r.headers["etag"] : "";
          last_modified_ = r.headers.count("last-modified") ? r.headers["last-modified"] : "";
          stats_.bytes_fetched += 1;
          stats_.http_version = r.http_version;
          return std::move(r.body);
        }
      } else if (r.status == 416 && r.headers.count("content-range") &&
                 parse_unsatisfied_range(r.headers["content-range"]) == uint64_t(0)) {
        st = Invalid(url_ + ": the object is empty");
      } else if (r.status == 200) {
        st = IoError(url_ + ": server ignores Range requests (200 to bytes=0-0); udm needs ranged GETs");
      } else if (r.status == 404 || r.status == 410) {
        st = Status::Error(ENOENT, url_ + ": " + r.describe() + " (not found)");
      } else if (r.status == 403) {
        st = Status::Error(EACCES, url_ + ": " + r.describe() + " (forbidden)");
      } else {
        st = IoError(url_ + ": " + r.describe());
      }
    } else {
      st = check_range_reply(r.status, r.headers, r.body.size(), RangeExpect{off, len, size_, etag_}, url_);
      if (st.ok()) {
        stats_.bytes_fetched += len;
        stats_.http_version = r.http_version;
        return std::move(r.body);
      }
    }
    if (!retry) {
      stats_.errors++;
      return st;
    }
    {
      std::lock_guard lk(err_mu_);
      last_error_ = st.message();
    }
    if (!troubled) {
      troubled = true;
      troubled_++;
    }
    uint64_t backoff = std::min<uint64_t>(cfg_.retry_max_ms, uint64_t(cfg_.retry_base_ms) << std::min(attempt, 20));
    backoff = backoff * 3 / 4 + rng() % (backoff / 2 + 1);
    if (after) backoff = std::max<uint64_t>(backoff, *after * 1000);
    const bool spent = attempt >= cfg_.retries;
    if (spent && on_error() == OnError::kFail) {
      stats_.errors++;
      return IoError(fmt::format("{} (gave up after {} retries)", st.message(), cfg_.retries));
    }
    if (spent && !queued) {
      queued = true;
      stats_.waiting++;
      log::warn("{}; retries spent: waiting for the server (--remote-on-error queue)", st.message());
    }
    stats_.retries++;
    uint64_t ms = spent ? std::max<uint64_t>(after ? *after * 1000 : 0, cfg_.retry_max_ms) : backoff;
    if (!spent) log::debug("{}; retry {} in {} ms", st.message(), attempt + 1, ms);
    Wake w = pause(ms, retry0, release0, queued);
    if (w == Wake::kRelease || w == Wake::kPolicy) {
      stats_.errors++;
      stats_.released++;
      const char* why = w == Wake::kRelease ? "released by the operator (udm message ... source release)"
                                            : "released: on-error switched to fail (udm message ... source on-error fail)";
      log::warn("{}: {} after {} attempts", what, why, attempt + 1);
      std::string last = st.message();
      if (last.rfind(what + ": ", 0) == 0) last = last.substr(what.size() + 2);
      return IoError(fmt::format("{}: {} after {} attempts (last: {})", what, why, attempt + 1, last));
    }
  }
}

HttpDevice::Wake HttpDevice::pause(uint64_t ms, uint64_t retry0, uint64_t release0, bool queued) {
  std::unique_lock lk(wait_mu_);
  Wake w = Wake::kTime;
  wait_cv_.wait_for(lk, std::chrono::milliseconds(ms), [&] {
    if (release_gen_ != release0) w = Wake::kRelease;
    else if (queued && on_error() == OnError::kFail) w = Wake::kPolicy;
    else if (retry_gen_ != retry0) w = Wake::kRetry;
    return w != Wake::kTime;
  });
  return w;
}

Status HttpDevice::probe() {
  auto r = fetch(0, 1, true);
  return r.ok() ? Status::Ok() : r.status().context(spec_ == url_ ? "open" : "open " + spec_);
}

bool HttpDevice::block_present(uint64_t b) {
  if (obj_) return obj_->present(b);
  return BlockCache::shared()->peek(mem_owner_, b) != nullptr;
}

Result<bool> HttpDevice::read_block_cached(uint64_t b, uint64_t off_in_block, std::span<uint8_t> out) {
  if (obj_) return obj_->read_if_present(b, off_in_block, out);
  auto blk = BlockCache::shared()->peek(mem_owner_, b);
  if (!blk) return false;
  std::memcpy(out.data(), blk->data() + off_in_block, out.size());
  return true;
}

Status HttpDevice::do_read(uint64_t off, std::span<uint8_t> buf) {
  if (buf.empty()) return Status::Ok();
  if (!tl_prefetching)
    if (BackgroundJob* j = pf_job_raw_.load(std::memory_order_acquire)) j->foreground_io();
  const uint64_t end = off + buf.size();
  const uint64_t first = off / bs_, last = (end - 1) / bs_;
  const uint64_t max_blocks = std::max<uint64_t>(1, cfg_.max_fetch / bs_);
  uint64_t ra = 0;
  {
    // Readahead serves readers whose requests are small (each would be a
    // round trip): a read continuing the last one, and smaller than
    // kReadaheadBelow, grows the window. A larger read comes from a reader
    // that reads ahead itself (the kernel's page-cache readahead, whose
    // window grows to hundreds of KiB): more would only fetch past the end
    // of its streams. It, or a read elsewhere, resets the window.
    std::lock_guard lk(ra_mu_);
    if (off == ra_next_ && buf.size() < kReadaheadBelow)
      ra_blocks_ = std::min<uint64_t>(max_blocks, ra_blocks_ ? ra_blocks_ * 2 : 2);
    else ra_blocks_ = 0;
    ra_next_ = end;
    ra = ra_blocks_;
  }
  auto piece = [&](uint64_t blk, uint64_t& s, uint64_t& e) {
    s = std::max(off, blk * bs_);
    e = std::min(end, blk * bs_ + bs_);
  };
  Status verify_st;
  uint64_t b = first;
  while (b <= last) {
    uint64_t s, e;
    piece(b, s, e);
    auto hit = read_block_cached(b, s - b * bs_, buf.subspan(s - off, e - s));
    if (!hit.ok()) return hit.status().context(spec_ + ": cache");
    if (*hit) {
      stats_.cache_hits++;
      b++;
      continue;
    }
    std::shared_ptr<Flight> f;
    bool mine = false;
    {
      std::lock_guard lk(fl_mu_);
      auto it = flights_.find(b);
      if (it != flights_.end()) {
        f = it->second;
      } else if (block_present(b)) {
        continue;  // stored while we looked: read it from the cache
      } else {
        mine = true;
        f = std::make_shared<Flight>();
        f->first = b;
        uint64_t limit = std::min({nblocks_ - 1, b + max_blocks - 1, last + ra});
        uint64_t x = b;
        while (x + 1 <= limit && !flights_.count(x + 1) && !block_present(x + 1)) x++;
        f->last = x;
        for (uint64_t i = b; i <= x; i++) flights_[i] = f;
      }
    }
    if (mine) {
      uint64_t foff = f->first * bs_;
      uint64_t flen = std::min(size_, (f->last + 1) * bs_) - foff;
      auto data = fetch(foff, flen, false);
      {
        std::lock_guard lk(f->mu);
        if (data.ok()) f->data = std::make_shared<std::vector<uint8_t>>(std::move(*data));
        else f->st = data.status();
        f->done = true;
      }
      f->cv.notify_all();
      if (f->st.ok()) {
        if (obj_) {
          Status st = obj_->store(f->first, *f->data);
          if (!st.ok()) log::warn("{}: cache write failed (data served anyway): {}", spec_, st.to_string());
        } else {
          for (uint64_t i = f->first; i <= f->last; i++) {
            uint64_t o = (i - f->first) * bs_;
            uint64_t n = std::min<uint64_t>(bs_, f->data->size() - o);
            BlockCache::shared()->put(mem_owner_, i, std::make_shared<const std::vector<uint8_t>>(
                                                       f->data->begin() + long(o), f->data->begin() + long(o + n)));
          }
        }
      }
      {
        std::lock_guard lk(fl_mu_);
        for (uint64_t i = f->first; i <= f->last; i++) flights_.erase(i);
      }
      if (f->st.ok() && obj_ && !digest_hex_.empty() && obj_->present_count() == nblocks_ && !obj_->verified() &&
          !verify_pending_.exchange(true)) {
        verify_st = obj_->verify_sha256(digest_hex_, spec_);
        verify_pending_ = false;
        if (!verify_st.ok()) {
          stats_.errors++;
          log::error("{}", verify_st.message());
        }
      }
    } else {
      std::unique_lock lk(f->mu);
      f->cv.wait(lk, [&] { return f->done; });
    }
    if (!f->st.ok()) return f->st;
    uint64_t upto = std::min(f->last, last);
    for (uint64_t i = b; i <= upto; i++) {
      piece(i, s, e);
      std::memcpy(buf.data() + (s - off), f->data->data() + (s - f->first * bs_), e - s);
    }
    b = upto + 1;
  }
  return verify_st;
}

void HttpDevice::stop_prefetch() {
  std::lock_guard lk(pf_mu_);
  if (!pf_thread_.joinable()) return;
  pf_stop_ = true;
  if (pf_job_) pf_job_->wake();
  pf_thread_.join();
}

Result<std::string> HttpDevice::prefetch_control(const std::vector<std::string>& args) {
  const std::string what = spec_ + ": prefetch";
  const std::string verb = args.empty() ? "start" : args[0];
  if (verb == "start") {
    if (args.size() > 2) return Invalid(what + ": start takes at most a throttle (<MiB/s>, auto or off)");
    if (!obj_) return Invalid(what + ": needs a persistent cache (the daemon runs with --cache-dir none)");
    if (cfg_.cache_size && size_ > cfg_.cache_size)
      return Invalid(fmt::format("{}: the source ({} bytes) is larger than the cache's cap (--cache-size {}); "
                                 "a prefetch would evict what it fetched",
                                 what, size_, cfg_.cache_size));
    std::lock_guard lk(pf_mu_);
    // start keeps the throttle of an earlier run unless it names one, and unpauses.
    JobPolicy pol = pf_job_ ? pf_job_->policy() : JobPolicy{};
    pol.paused = false;
    if (args.size() == 2) {
      UDM_ASSIGN_OR_RETURN(pol, parse_throttle(args[1], pol, what + ": throttle"));
    }
    if (!pf_job_) {
      pf_job_ = std::make_unique<BackgroundJob>("remote-prefetch", "blocks", pol);
      pf_job_raw_.store(pf_job_.get(), std::memory_order_release);
    } else {
      pf_job_->set_policy(pol);
    }
    pf_job_->set_total(nblocks_, size_);
    pf_job_->set_done(obj_->present_count(), bytes_cached());
    if (pf_thread_.joinable()) {
      if (!pf_job_->info().error.empty() || pf_job_->is_done() || pf_job_->info().state == "paused") {
        // A finished (or failed) run: join it and start again.
        pf_stop_ = true;
        pf_job_->wake();
        pf_thread_.join();
      } else {
        return fmt::format("prefetch already running (throttle {})", pol.throttle_text());
      }
    }
    pf_stop_ = false;
    pf_thread_ = std::thread([this] { prefetch_loop(); });
    return fmt::format("prefetch started: {} of {} bytes cached", bytes_cached(), size_);
  }
  if (verb == "stop") {
    if (args.size() != 1) return Invalid(what + ": stop takes no arguments");
    stop_prefetch();
    return std::string();
  }
  if (!BackgroundJob::is_job_message(args))
    return Invalid(fmt::format("{}: unknown word '{}' (start, stop, pause, resume, throttle)", what, verb));
  std::lock_guard lk(pf_mu_);
  if (!pf_job_) return Invalid(what + ": no prefetch was started");
  return pf_job_->message(args, what);
}

std::vector<JobInfo> HttpDevice::prefetch_jobs() const {
  // Not under pf_mu_ (a stop may hold it while the worker finishes a fetch):
  // the job, once made, lives as long as the device.
  BackgroundJob* j = pf_job_raw_.load(std::memory_order_acquire);
  if (!j) return {};
  return {j->info()};
}

void HttpDevice::prefetch_loop() {
  tl_prefetching = true;
  BackgroundJob& job = *pf_job_;
  job.started();
  const uint64_t step = std::max<uint64_t>(1, cfg_.max_fetch / bs_);
  std::vector<uint8_t> buf;
  Status st;
  uint64_t b = 0;
  while (b < nblocks_ && !pf_stop_) {
    if (block_present(b)) {
      b++;
      continue;
    }
    // A run of missing blocks, as large as one fetch (smaller while throttled).
    const uint64_t want = std::max<uint64_t>(1, job.batch_bytes(bs_, step * bs_) / bs_);
    uint64_t e = b;
    while (e + 1 < nblocks_ && e + 1 - b < want && !block_present(e + 1)) e++;
    const uint64_t off = b * bs_, len = std::min(size_, (e + 1) * bs_) - off;
    if (!job.admit(len, pf_stop_)) break;
    buf.resize(len);
    st = do_read(off, buf);
    if (!st.ok()) break;
    job.set_done(obj_->present_count(), bytes_cached());
    b = e + 1;
  }
  job.set_done(obj_->present_count(), bytes_cached());
  if (st.ok() && !pf_stop_ && obj_->present_count() < nblocks_)
    st = IoError(fmt::format("{}: prefetch: the cache kept {} of {} blocks (evicted by other sources?)", spec_,
                             obj_->present_count(), nblocks_));
  if (!st.ok()) log::error("{}", st.message());
  job.finished(st);
}

Result<std::string> prefetch_control(const std::string& spec, const std::vector<std::string>& args) {
  auto d = live_device(spec);
  if (!d) return Status::Error(ENOENT, spec + ": not open");
  return d->prefetch_control(args);
}

std::vector<JobInfo> prefetch_jobs(const std::string& spec) {
  auto d = live_device(spec);
  if (!d) return {};
  return d->prefetch_jobs();
}

Result<std::string> HttpDevice::source_message(const std::vector<std::string>& args) {
  const std::string what = spec_ + ": source";
  const std::string usage = " (retry, release, on-error fail|queue)";
  if (args.empty()) return Invalid(what + ": no message given" + usage);
  const std::string& verb = args[0];
  if (verb == "retry" || verb == "release") {
    if (args.size() != 1) return Invalid(fmt::format("{}: {} takes no arguments (got '{}')", what, verb, args[1]));
    int n = troubled_.load(), q = stats_.waiting.load();
    {
      std::lock_guard lk(wait_mu_);
      (verb == "retry" ? retry_gen_ : release_gen_)++;
    }
    wait_cv_.notify_all();
    log::info("{}: {} ({} fetches retrying, {} of them waiting)", what, verb, n, q);
    if (verb == "retry") return fmt::format("retrying now: {} fetch(es) ({} waiting)", n, q);
    return fmt::format("released: {} fetch(es) ({} waiting) fail with EIO", n, q);
  }
  if (verb == "on-error") {
    if (args.size() != 2) return Invalid(what + ": on-error takes one word: fail or queue");
    auto p = parse_on_error(args[1]);
    if (!p.ok()) return p.status().context(what + ": on-error");
    int q = stats_.waiting.load();
    {
      std::lock_guard lk(wait_mu_);
      on_error_ = *p == OnError::kQueue ? 1 : 0;
    }
    wait_cv_.notify_all();
    log::info("{}: on-error {}", what, args[1]);
    if (*p == OnError::kFail) return fmt::format("on-error fail: {} waiting fetch(es) released (EIO)", q);
    return std::string("on-error queue");
  }
  return Invalid(fmt::format("{}: unknown message '{}'{}", what, verb, usage));
}

Result<std::string> source_message(const std::string& spec, const std::vector<std::string>& args) {
  std::vector<std::shared_ptr<HttpDevice>> devs;
  {
    std::lock_guard lk(g_live_mu);
    auto [a, z] = g_live.equal_range(spec);
    for (auto it = a; it != z; ++it)
      if (auto d = it->second.lock()) devs.push_back(d);
  }
  if (devs.empty()) return Status::Error(ENOENT, spec + ": not open");
  std::string out;
  for (auto& d : devs) {
    auto r = d->source_message(args);
    if (!r.ok()) return r.status();
    if (out.empty()) out = *r;
    else if (out != *r) out += "; " + *r;
  }
  return out;
}

std::string live_sources_json(const std::vector<std::string>& specs) {
  std::string out = "[";
  std::lock_guard lk(g_live_mu);
  for (const auto& s : specs) {
    auto [a, z] = g_live.equal_range(s);
    for (auto it = a; it != z; ++it) {
      if (auto d = it->second.lock()) {
        if (out.size() > 1) out += ",";
        out += d->stats_json();
        break;
      }
    }
  }
  return out + "]";
}

}  // namespace udm::remote
