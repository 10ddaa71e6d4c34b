// A read-only BlockDevice over the bytes of an HTTP(S) URL or an OCI blob,
// fetched lazily by ranged GETs and kept in the persistent cache
// (cache_store.h). See docs/remote.md for the guarantees.
//
// Read path: each block (64 KiB) is served from the cache, or joins the one
// fetch in flight for it (single flight), or starts a fetch of the run of
// adjacent missing blocks (coalesced, up to max_fetch, extended by an
// adaptive readahead window on sequential reads smaller than 128 KiB). Every reply is checked
// (http_check.h: 206, exact Content-Range, unchanged ETag and size, exact
// length); transport errors, 5xx and 429 are retried with backoff honouring
// Retry-After; then --remote-on-error fail (EIO) or queue (wait until the
// server answers, state "waiting").
//
// Locks: ra_mu_ and fl_mu_ are leaves, never held across I/O; a flight's mu
// is a leaf. The cache object's locks are taken without any of these held.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "device/background_job.h"
#include "device/block_device.h"
#include "remote/auth.h"
#include "remote/cache_store.h"
#include "remote/config.h"
#include "remote/http_client.h"

namespace udm::remote {

struct SourceStats {
  std::atomic<uint64_t> bytes_fetched{0}, requests{0}, retries{0}, errors{0}, cache_hits{0};
  std::atomic<int> waiting{0};  // fetches waiting for the server (on_error=queue)
  std::atomic<uint64_t> released{0};  // fetches failed by `source release` or `source on-error fail`
  std::atomic<long> http_version{0};  // CURL_HTTP_VERSION_* of the last accepted reply
};

// oci://HOST[:PORT]/REPO@sha256:HEX
struct OciRef {
  std::string authority, repo, digest_hex;
  bool plain_http = false;
  std::string blob_url() const;
};
Result<OciRef> parse_oci_blob_ref(const std::string& spec);
bool is_loopback_host(const std::string& authority);

class HttpDevice : public BlockDevice {
 public:
  // spec: what the user wrote (in messages); url: where the bytes are;
  // auth: for registries (may be null); digest_hex: expected sha256 (OCI).
  static Result<std::shared_ptr<HttpDevice>> open(const std::string& spec, const std::string& url,
                                                  std::shared_ptr<RegistryAuth> auth, const std::string& digest_hex);
  ~HttpDevice() override;

  uint64_t size() const override { return size_; }
  DeviceCaps caps() const override;
  const std::string& spec() const { return spec_; }
  const SourceStats& stats() const { return stats_; }
  uint64_t bytes_cached() const;
  uint64_t bytes_pinned() const;
  bool block_pinned(uint64_t b) const { return obj_ && obj_->pinned(b); }
  bool block_cached(uint64_t b) const { return obj_ && obj_->present(b); }
  bool persistent() const { return obj_ != nullptr; }
  // DIR/ID.overlay for the object (ID: its cache id, the sha256 of its key;
  // the key: "sha256:HEX" or URL + validator + size), when this process
  // owns a persistent cache directory; else why not (--cache-dir none,
  // another process owns the directory).
  Result<LocalStateHome> local_state_home() const override;
  // {"url":..., "bytes_fetched":..., ...}
  std::string stats_json() const;

  // `udm prefetch`: fills the persistent cache with every block in the
  // background, a BackgroundJob (kind "remote-prefetch", unit "blocks"):
  // args start [<MiB/s>|auto|off] | stop | pause | resume | throttle <MiB/s>|auto|off.
  // Refused without a persistent cache or when the blob is larger than the
  // cache's cap (the prefetch would evict what it fetched).
  Result<std::string> prefetch_control(const std::vector<std::string>& args);
  // The prefetch job, if one was ever started.
  std::vector<JobInfo> prefetch_jobs() const;

  // Operator control of fetches whose server stopped answering
  // (`udm message NAME SECTOR source WORDS...`, docs/remote.md):
  //   retry               fetches sleeping between attempts (backing off, or
  //                       waiting under on-error queue) try again now
  //   release             every fetch begun before the message that has not
  //                       succeeded fails with EIO at once (a request on the
  //                       wire ends first, at most --remote-stall-timeout)
  //   on-error fail|queue this source's policy from now on; fail also fails
  //                       the waiting fetches, as dm-multipath's fail_if_no_path
  // Replies with what it did; bad words are EINVAL naming them.
  Result<std::string> source_message(const std::vector<std::string>& args);
  OnError on_error() const { return on_error_.load() ? OnError::kQueue : OnError::kFail; }

 protected:
  Status do_read(uint64_t offset, std::span<uint8_t> buf) override;
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return ReadOnly(spec_ + ": remote source is read-only"); }
  Status do_flush() override { return Status::Ok(); }
  // keep_cached: pins the blocks of the range in the persistent cache while
  // this device lives (format metadata; nothing without a persistent cache).
  void do_keep_cached(uint64_t offset, uint64_t length) override;

 private:
  struct Flight {
    uint64_t first = 0, last = 0;  // blocks, inclusive
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Status st;
    std::shared_ptr<std::vector<uint8_t>> data;  // bytes of [first*bs, ...)
  };
  HttpDevice() = default;
  void prefetch_loop();
  void stop_prefetch();
  // One GET (auth, redirects), no retries; the reply to check.
  Result<HttpReply> get_once(uint64_t off, uint64_t len, bool probe);
  // Fetch [off, off+len) with checks and retries (probe: learn size/ETag).
  Result<std::vector<uint8_t>> fetch(uint64_t off, uint64_t len, bool probe);
  Status probe();
  bool block_present(uint64_t b);
  Result<bool> read_block_cached(uint64_t b, uint64_t off_in_block, std::span<uint8_t> out);

  std::string spec_, url_;
  std::shared_ptr<RegistryAuth> auth_;
  std::string digest_hex_;
  RemoteConfig cfg_;
  uint64_t size_ = 0;
  uint32_t bs_ = 0;
  uint64_t nblocks_ = 0;
  std::string etag_, last_modified_;
  std::shared_ptr<CacheStore> store_;
  std::shared_ptr<CacheObject> obj_;
  uint64_t mem_owner_ = 0;  // BlockCache owner when there is no persistent cache
  SourceStats stats_;

  std::mutex url_mu_;
  std::string actual_url_;  // cached redirect target (blob storage)

  std::mutex ra_mu_;
  uint64_t ra_next_ = UINT64_MAX;
  uint64_t ra_blocks_ = 0;

  mutable std::mutex pin_mu_;  // leaf; pins_ (released by the destructor)
  std::vector<std::pair<uint64_t, uint64_t>> pins_;  // first block, count

  // Between attempts a fetch sleeps on wait_cv_ (wait_mu_, a leaf) until its
  // time is up, or retry_gen_ / release_gen_ move (source_message), or its
  // queue wait ends because the policy became fail.
  enum class Wake { kTime, kRetry, kRelease, kPolicy };
  Wake pause(uint64_t ms, uint64_t retry0, uint64_t release0, bool queued);
  std::mutex wait_mu_;
  std::condition_variable wait_cv_;
  uint64_t retry_gen_ = 0, release_gen_ = 0;  // guarded by wait_mu_
  std::atomic<int> on_error_{0};              // 1: queue (OnError::kQueue)
  std::atomic<int> troubled_{0};              // fetches that failed an attempt and have not ended
  mutable std::mutex err_mu_;                 // leaf
  std::string last_error_;                    // why the last fetch retried, failed or waits

  std::mutex fl_mu_;
  std::map<uint64_t, std::shared_ptr<Flight>> flights_;
  std::atomic<bool> verify_pending_{false};

  // Prefetch: created on the first start, kept until the device goes.
  mutable std::mutex pf_mu_;  // leaf; guards the thread handle
  std::unique_ptr<BackgroundJob> pf_job_;
  std::atomic<BackgroundJob*> pf_job_raw_{nullptr};  // for the read path's foreground_io()
  std::thread pf_thread_;
  std::atomic<bool> pf_stop_{false};
};

// A live source's prefetch control and jobs by spec (the scheme registry's
// job hooks; errors when no live device has that spec).
Result<std::string> prefetch_control(const std::string& spec, const std::vector<std::string>& args);
std::vector<JobInfo> prefetch_jobs(const std::string& spec);
// HttpDevice::source_message on every open source of that spec (one URL
// opened by two tables is one server: both are told); ENOENT if none.
Result<std::string> source_message(const std::string& spec, const std::vector<std::string>& args);

// Live remote devices by spec (udm info --json); the JSON array text.
std::string live_sources_json(const std::vector<std::string>& specs);

}  // namespace udm::remote
