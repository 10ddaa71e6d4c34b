// The background job controller (device/background_job.h): policy parsing
// (table options and messages, errors naming the argument), pause/resume and
// stop waking a waiting worker, the token bucket's ceiling, states and the
// figures `udm info --json` shows.
#include "device/background_job.h"

#include <gtest/gtest.h>

#include <thread>

#include "device/target_args.h"

using namespace udm;

namespace {

Result<JobPolicy> from_table(std::vector<std::string> opts) {
  std::vector<std::string> args{std::to_string(opts.size())};
  args.insert(args.end(), opts.begin(), opts.end());
  TargetArgs a("t", args);
  UDM_ASSIGN_OR_RETURN(OptArgs o, a.opt_group());
  UDM_ASSIGN_OR_RETURN(JobPolicy p, JobPolicy::from_opts(o, "t"));
  UDM_TRY(o.done());
  return p;
}

}  // namespace

TEST(BackgroundJob, TableOptions) {
  auto p = from_table({});
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->paused);
  EXPECT_EQ(p->throttle_text(), "off");
  p = from_table({"paused", "throttle=auto"});
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->paused);
  EXPECT_EQ(p->throttle, JobPolicy::Throttle::kAuto);
  p = from_table({"throttle=2.5"});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->throttle, JobPolicy::Throttle::kRate);
  EXPECT_EQ(p->rate, uint64_t{5} << 19);
  EXPECT_EQ(p->throttle_text(), "2.5");
  EXPECT_EQ(from_table({"throttle=off"})->throttle, JobPolicy::Throttle::kOff);
  // Refusals name the target and the argument.
  auto err = [](std::vector<std::string> o) { return from_table(std::move(o)).status().message(); };
  EXPECT_EQ(err({"throttle=fast"}), "t: throttle: 'fast' is not a rate: give MiB/s (a positive number), auto or off");
  EXPECT_EQ(err({"throttle=0"}), "t: throttle: 0 MiB/s is out of range (more than 0, at most 1000000)");
  EXPECT_NE(err({"throttle="}).find("throttle"), std::string::npos) << err({"throttle="});
  EXPECT_NE(err({"throttle=-1"}).find("'-1' is not a rate"), std::string::npos);
  EXPECT_NE(err({"throttle=1.2.3"}).find("'1.2.3' is not a rate"), std::string::npos);
  EXPECT_NE(err({"throttle=.5"}).find("'.5' is not a rate"), std::string::npos);
  EXPECT_NE(err({"throttle=1e3"}).find("'1e3' is not a rate"), std::string::npos);
  EXPECT_NE(err({"paused", "paused"}).find("paused: given twice"), std::string::npos);
  EXPECT_NE(err({"pause"}).find("unknown optional argument 'pause' (known: paused, throttle=<value>)"),
            std::string::npos);
}

TEST(BackgroundJob, Messages) {
  BackgroundJob j("k", "units");
  EXPECT_TRUE(BackgroundJob::is_job_message({"pause"}));
  EXPECT_TRUE(BackgroundJob::is_job_message({"throttle", "1"}));
  EXPECT_FALSE(BackgroundJob::is_job_message({"state", "1"}));
  EXPECT_FALSE(BackgroundJob::is_job_message({}));
  ASSERT_TRUE(j.message({"pause"}, "t").ok());
  EXPECT_TRUE(j.policy().paused);
  ASSERT_TRUE(j.message({"resume"}, "t").ok());
  EXPECT_FALSE(j.policy().paused);
  ASSERT_TRUE(j.message({"throttle", "auto"}, "t").ok());
  EXPECT_EQ(j.info().throttle, "auto");
  ASSERT_TRUE(j.message({"throttle", "16"}, "t").ok());
  EXPECT_EQ(j.info().throttle, "16");
  EXPECT_EQ(j.policy().rate, uint64_t{16} << 20);
  auto m = j.message({"throttle", "x"}, "t");
  EXPECT_EQ(m.status().code(), EINVAL);
  EXPECT_EQ(m.status().message(), "t: throttle: 'x' is not a rate: give MiB/s (a positive number), auto or off");
  EXPECT_EQ(j.message({"throttle"}, "t").status().message(), "t: throttle: give <MiB/s>, auto or off");
  EXPECT_EQ(j.message({"throttle", "1", "2"}, "t").status().message(), "t: throttle: give <MiB/s>, auto or off");
  EXPECT_EQ(j.message({"pause", "now"}, "t").status().message(), "t: pause: takes no arguments");
  EXPECT_EQ(j.info().throttle, "16") << "a refused message changes nothing";
  ASSERT_TRUE(j.message({"throttle", "off"}, "t").ok());
  EXPECT_EQ(j.info().throttle, "off");
}

TEST(BackgroundJob, PauseBlocksAdmitUntilResumeOrStop) {
  JobPolicy pol;
  pol.paused = true;
  BackgroundJob j("k", "units", pol);
  j.set_total(10, 10 * 4096);
  j.set_done(0, 0);
  EXPECT_EQ(j.info().state, "paused");  // not started
  std::atomic<bool> stop{false}, admitted{false};
  std::atomic<int> on_pause_calls{0};
  j.started();
  EXPECT_EQ(j.info().state, "paused");
  std::thread w([&] {
    admitted = j.admit(4096, stop, [&] { on_pause_calls++; });
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(admitted.load()) << "admitted while paused";
  ASSERT_TRUE(j.message({"resume"}, "t").ok());
  w.join();
  EXPECT_TRUE(admitted.load());
  EXPECT_EQ(on_pause_calls.load(), 1) << "the worker is told once that a pause began";
  EXPECT_EQ(j.info().state, "running");
  // Paused again, then stopped (suspend): admit returns false.
  ASSERT_TRUE(j.message({"pause"}, "t").ok());
  admitted = true;
  std::thread w2([&] { admitted = j.admit(4096, stop); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop = true;
  j.wake();
  w2.join();
  EXPECT_FALSE(admitted.load());
  j.finished(Status::Ok());
  EXPECT_EQ(j.info().state, "paused");  // stopped, not done
}

TEST(BackgroundJob, StatesAndFigures) {
  BackgroundJob j("copy", "blocks");
  j.set_total(100, 100 * 4096);
  j.set_done(0, 0);
  j.started();
  auto i = j.info();
  EXPECT_EQ(i.kind, "copy");
  EXPECT_EQ(i.unit, "blocks");
  EXPECT_EQ(i.state, "running");
  EXPECT_EQ(i.total, 100u);
  EXPECT_EQ(i.total_bytes, 100u * 4096);
  EXPECT_FALSE(i.eta_seconds) << "no rate yet";
  std::atomic<bool> stop{false};
  for (uint64_t k = 1; k <= 50; k++) {
    ASSERT_TRUE(j.admit(4096, stop));
    j.set_done(k, k * 4096);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  i = j.info();
  EXPECT_EQ(i.done, 50u);
  EXPECT_EQ(i.done_bytes, 50u * 4096);
  EXPECT_GT(i.bytes_per_second, 0);
  ASSERT_TRUE(i.eta_seconds);
  EXPECT_GT(*i.eta_seconds, 0);
  // A failure: failed with its message, no ETA; a restart clears it.
  j.finished(IoError("disk on fire"));
  i = j.info();
  EXPECT_EQ(i.state, "failed");
  EXPECT_EQ(i.error, "disk on fire");
  EXPECT_FALSE(i.eta_seconds);
  EXPECT_FALSE(j.is_done());
  j.started();
  EXPECT_EQ(j.info().state, "running");
  j.set_done(100, 100 * 4096);
  // All counted, but the worker has not finished (its last checkpoint may
  // still be under way): not done yet.
  EXPECT_EQ(j.info().state, "running");
  EXPECT_FALSE(j.is_done());
  j.finished(Status::Ok());
  i = j.info();
  EXPECT_EQ(i.state, "done");
  ASSERT_TRUE(i.eta_seconds);
  EXPECT_EQ(*i.eta_seconds, 0);
  EXPECT_TRUE(j.is_done());
}

// active_seconds: the clock runs from the first admitted piece of work,
// stops while paused and when the worker finishes, and keeps its figure;
// parked says whether the worker is waiting for a resume.
TEST(BackgroundJob, ActiveSecondsCountWorkNotPauses) {
  JobPolicy paused;
  paused.paused = true;
  BackgroundJob j("copy", "blocks", paused);
  j.set_total(10, 10 * 4096);
  j.started();
  std::atomic<bool> stop{false};
  std::atomic<bool> admitted{false};
  std::thread w([&] { admitted = j.admit(4096, stop); });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_FALSE(admitted);
  EXPECT_EQ(j.info().active_seconds, 0) << "paused from the start: nothing worked";
  EXPECT_TRUE(j.info().parked) << "the worker waits for a resume";
  ASSERT_TRUE(j.message({"resume"}, "t").ok());
  w.join();
  ASSERT_TRUE(admitted);
  EXPECT_FALSE(j.info().parked) << "admitted: the worker works";
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const double a1 = j.info().active_seconds;
  EXPECT_GE(a1, 0.1);
  // Paused for 300 ms: the clock stands still meanwhile.
  ASSERT_TRUE(j.message({"pause"}, "t").ok());
  w = std::thread([&] { admitted = j.admit(4096, stop); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const double a2 = j.info().active_seconds;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(j.info().active_seconds, a2);
  EXPECT_LT(a2 - a1, 0.3) << a1 << " " << a2;
  ASSERT_TRUE(j.message({"resume"}, "t").ok());
  w.join();
  j.set_done(10, 10 * 4096);
  j.finished(Status::Ok());
  const double a3 = j.info().active_seconds;
  EXPECT_GT(a3, a2);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(j.info().active_seconds, a3) << "a finished job keeps its figure";
  EXPECT_FALSE(j.info().parked) << "a worker that finished waits for nothing";
  EXPECT_EQ(j.info().state, "done");
}

TEST(BackgroundJob, RateThrottleIsACeiling) {
  // 1 MiB/s: the bucket holds a tenth of a second's worth; admitting 1 MiB
  // in 64 KiB pieces must take at least (1 MiB - burst) / rate. (A lower
  // bound only: a slow machine can only make it take longer.)
  BackgroundJob j("k", "units");
  j.set_total(1000, 1000 << 20);
  ASSERT_TRUE(j.message({"throttle", "1"}, "t").ok());
  j.started();
  std::atomic<bool> stop{false};
  const auto t0 = std::chrono::steady_clock::now();
  for (int k = 0; k < 16; k++) ASSERT_TRUE(j.admit(64 << 10, stop));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(s, (1.0 - 0.1 - 1.0 / 16) * 0.99) << "1 MiB passed a 1 MiB/s throttle in " << s << " s";
  EXPECT_EQ(j.info().state, "throttled");
  EXPECT_EQ(j.batch_bytes(4096, 4 << 20), (1u << 20) / 10) << "throttled batches are a tenth of a second's worth";
  ASSERT_TRUE(j.message({"throttle", "off"}, "t").ok());
  EXPECT_EQ(j.batch_bytes(4096, 4 << 20), 4u << 20);
}

TEST(BackgroundJob, AutoTrickleOnlyWhileForegroundIo) {
  BackgroundJob j("k", "units");
  j.set_total(1000, 1000 << 20);
  ASSERT_TRUE(j.message({"throttle", "auto"}, "t").ok());
  j.started();
  std::atomic<bool> stop{false};
  // Idle: full speed (no wait however much is admitted).
  for (int k = 0; k < 64; k++) ASSERT_TRUE(j.admit(1 << 20, stop));
  EXPECT_EQ(j.info().state, "running");
  // Busy: a trickle - 512 KiB takes at least (512 KiB - burst) / trickle.
  std::atomic<bool> fg_stop{false};
  j.foreground_io();
  std::thread fg([&] {
    while (!fg_stop) {
      j.foreground_io();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  for (int k = 0; k < 8; k++) ASSERT_TRUE(j.admit(64 << 10, stop));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double trickle = BackgroundJob::kTrickleBytesPerSecond;
  EXPECT_GE(s, ((512 << 10) - trickle / 10 - (64 << 10)) / trickle * 0.99) << s;
  EXPECT_EQ(j.info().state, "throttled");
  EXPECT_LE(j.batch_bytes(4096, 4 << 20), uint64_t(trickle / 10));
  fg_stop = true;
  fg.join();
}
