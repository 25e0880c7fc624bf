// vCPU threads: one native thread per vCPU loops on KVM_RUN and hands every exit to JS
// (contract: src/native/API.md "vCPU threads"; the rules are in native/THREADS.md).
//
// Ownership: a VcpuCore is shared by the JS VcpuThread object, the threadsafe function
// (until its finalizer) and the `run` ArrayBuffer (until it is collected). The kvm_run
// mapping is unmapped only when the last of them lets go, so neither GC order nor env
// teardown order can unmap it under the thread or under JS.
#include "kvm_headers.h"
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <napi.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "errors.h"
#include "kvm_args.h"

namespace baton {

namespace {

// The kick signal: a realtime signal (SIGUSR1 belongs to Node's inspector). Its handler does
// nothing; installed without SA_RESTART so it makes a blocking KVM_RUN return EINTR.
int KickSignal() { return SIGRTMIN + 4; }

void NoopSignalHandler(int) {}

bool InstallKickHandler() {
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = NoopSignalHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: the point is to interrupt KVM_RUN
    ok = sigaction(KickSignal(), &sa, nullptr) == 0;
  });
  return ok;
}

class VcpuCore;
using CoreRef = std::shared_ptr<VcpuCore>;

void CallOnExit(Napi::Env env, Napi::Function onExit, CoreRef* context, void* data);
using ExitTsfn = Napi::TypedThreadSafeFunction<CoreRef, void, CallOnExit>;

struct EnvData;

class VcpuCore {
 public:
  VcpuCore(int fd, struct kvm_run* run, size_t mmapSize) : fd_(fd), run_(run), mmapSize_(mmapSize) {}
  ~VcpuCore() {
    if (run_ != nullptr) munmap(run_, mmapSize_);
  }

  int fd_;
  struct kvm_run* run_;
  size_t mmapSize_;
  EnvData* envData_ = nullptr;

  pthread_t thread_{};
  bool threadStarted_ = false;
  std::atomic<pid_t> tid_{0};
  ExitTsfn tsfn_;

  // Shared with the vCPU thread, under mutex_.
  std::mutex mutex_;
  std::condition_variable wake_;
  bool resumeRequested_ = false;
  bool stopRequested_ = false;
  int pendingReason_ = 0;  // written by the thread before it queues the exit; one in flight at most

  // JS-thread-only state.
  bool awaitingResume_ = true;  // the thread is parked: initially, and after each delivered exit
  bool stopped_ = false;

  void ThreadMain();
  void Resume(bool immediateExit);
  void Kick();
  void Stop();

  void SetImmediateExit(uint8_t value) { __atomic_store_n(&run_->immediate_exit, value, __ATOMIC_SEQ_CST); }
};

// Per-env registry so env teardown stops every thread (otherwise the process could not exit).
struct EnvData {
  Napi::FunctionReference constructor;
  std::set<VcpuCore*> live;
};

void* ThreadEntry(void* arg) {
  static_cast<VcpuCore*>(arg)->ThreadMain();
  return nullptr;
}

void VcpuCore::ThreadMain() {
  tid_.store(static_cast<pid_t>(syscall(SYS_gettid)));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();  // vcpuThreadStart waits for tid_
  }
  // Created with every signal blocked; accept only the kick, so process-directed signals
  // (SIGCHLD, SIGINT, ...) go to Node's threads and never interrupt KVM_RUN.
  sigset_t kick;
  sigemptyset(&kick);
  sigaddset(&kick, KickSignal());
  pthread_sigmask(SIG_UNBLOCK, &kick, nullptr);

  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return resumeRequested_ || stopRequested_; });
      if (stopRequested_) break;
      resumeRequested_ = false;
    }
    int r = ioctl(fd_, KVM_RUN, 0);
    int reason;
    if (r == 0) {
      reason = static_cast<int>(run_->exit_reason);
    } else if (errno == EINTR) {
      reason = -1;  // kick (immediate_exit or the kick signal)
    } else {
      reason = -2 - errno;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopRequested_) break;
      pendingReason_ = reason;
    }
    if (tsfn_.NonBlockingCall(nullptr) != napi_ok) break;  // env closing
  }
}

// Runs on the JS thread for each exit the thread queued.
void CallOnExit(Napi::Env env, Napi::Function onExit, CoreRef* context, void* /*data*/) {
  if (env == nullptr || onExit.IsEmpty()) return;  // env tearing down
  VcpuCore* core = context->get();
  if (core->stopped_) return;
  int reason;
  {
    std::lock_guard<std::mutex> lock(core->mutex_);
    reason = core->pendingReason_;
  }
  core->awaitingResume_ = true;
  onExit.Call({Napi::Number::New(env, reason)});
  // An exception thrown by onExit would otherwise be swallowed by Node 20 (legacy N-API
  // policy), leaving the vCPU parked silently: make it an ordinary uncaught exception.
  if (env.IsExceptionPending()) {
    Napi::Error error = env.GetAndClearPendingException();
    napi_fatal_exception(env, error.Value());
  }
}

void VcpuCore::Resume(bool immediateExit) {
  awaitingResume_ = false;
  // Set here, on the JS thread, so a kick() after this resume() still sees it set. With
  // immediateExit the next KVM_RUN only completes the exit just handled (the I/O result
  // JS wrote into kvm_run) and returns EINTR: how a pause finishes in-flight I/O.
  SetImmediateExit(immediateExit ? 1 : 0);
  std::lock_guard<std::mutex> lock(mutex_);
  resumeRequested_ = true;
  wake_.notify_all();
}

void VcpuCore::Kick() {
  if (stopped_ || awaitingResume_) return;  // not running, or its exit is already in JS's hands
  // immediate_exit covers a thread that has not entered KVM_RUN yet; the signal covers one
  // already inside it.
  SetImmediateExit(1);
  pthread_kill(thread_, KickSignal());
}

void VcpuCore::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (threadStarted_) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopRequested_ = true;
      wake_.notify_all();
    }
    SetImmediateExit(1);
    pthread_kill(thread_, KickSignal());
    pthread_join(thread_, nullptr);
    threadStarted_ = false;
  }
  if (tsfn_) {
    tsfn_.Release();  // lets the event loop exit; the finalizer drops its CoreRef
  }
  if (envData_ != nullptr) envData_->live.erase(this);
}

// ---- the JS VcpuThread object ----

class VcpuThread : public Napi::ObjectWrap<VcpuThread> {
 public:
  static Napi::Function DefineClass(Napi::Env env) {
    return Napi::ObjectWrap<VcpuThread>::DefineClass(env, "VcpuThread",
                                                     {InstanceMethod<&VcpuThread::Resume>("resume"),
                                                      InstanceMethod<&VcpuThread::Kick>("kick"),
                                                      InstanceMethod<&VcpuThread::Stop>("stop")});
  }

  // Constructed only by vcpuThreadStart, which passes the started core as an External.
  explicit VcpuThread(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VcpuThread>(info) {
    if (info.Length() < 2 || !info[0].IsExternal() || !info[1].IsArrayBuffer()) {
      ThrowArg(info.Env(), "VcpuThread", "use vcpuThreadStart() to create a vCPU thread");
      return;
    }
    core_ = *info[0].As<Napi::External<CoreRef>>().Data();
    Napi::Object self = info.This().As<Napi::Object>();
    self.Set("run", info[1]);
    self.Set("tid", Napi::Number::New(info.Env(), core_->tid_.load()));
  }

  ~VcpuThread() override {
    // Dropping the last JS handle ends the thread too.
    if (core_) core_->Stop();
  }

 private:
  Napi::Value Resume(const Napi::CallbackInfo& info) {
    if (core_->stopped_) return ThrowErrno(info.Env(), "vcpuThread.resume", ESRCH);
    if (!core_->awaitingResume_)
      return ThrowArg(info.Env(), "vcpuThread.resume", "the vCPU is already running (resume only after onExit)");
    core_->Resume(info.Length() > 0 && info[0].ToBoolean().Value());
    return info.Env().Undefined();
  }
  Napi::Value Kick(const Napi::CallbackInfo& info) {
    core_->Kick();
    return info.Env().Undefined();
  }
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    core_->Stop();
    return info.Env().Undefined();
  }

  CoreRef core_;
};

void FinalizeRunBuffer(napi_env, void*, void* hint) { delete static_cast<CoreRef*>(hint); }

// vcpuThreadStart(vcpuFd, mmapSize, onExit) -> VcpuThread
Napi::Value VcpuThreadStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "vcpuThreadStart";
  EnvData* envData = static_cast<EnvData*>(info.Data());
  int fd;
  int64_t mmapSize;
  if (!ArgFd(info, 0, op, &fd) || !ArgInt(info, 1, op, "mmapSize", sizeof(struct kvm_run), 1 << 24, &mmapSize))
    return env.Undefined();
  if (!info[2].IsFunction()) return ThrowArg(env, op, "onExit must be a function");
  // Only a KVM vCPU fd: mapping any other file would let resume()/kick() write to a page
  // that may not exist (SIGBUS) and run KVM_RUN on whatever the fd is.
  char link[64] = {0};
  std::string procPath = "/proc/self/fd/" + std::to_string(fd);
  if (readlink(procPath.c_str(), link, sizeof link - 1) < 0) return ThrowErrno(env, op, errno == ENOENT ? EBADF : errno);
  if (strncmp(link, "anon_inode:kvm-vcpu", strlen("anon_inode:kvm-vcpu")) != 0)
    return ThrowArg(env, op, "fd " + std::to_string(fd) + " is not a KVM vCPU (it is " + link + ")");
  if (!InstallKickHandler()) return ThrowErrno(env, "sigaction", errno);

  void* mapped = mmap(nullptr, static_cast<size_t>(mmapSize), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (mapped == MAP_FAILED) return ThrowErrno(env, "mmap", errno);
  CoreRef core = std::make_shared<VcpuCore>(fd, static_cast<struct kvm_run*>(mapped), static_cast<size_t>(mmapSize));

  // kvm_run as an ArrayBuffer over the mapping (no copy); its finalizer holds a CoreRef.
  napi_value runBuffer;
  CoreRef* bufferRef = new CoreRef(core);
  if (napi_create_external_arraybuffer(env, mapped, core->mmapSize_, FinalizeRunBuffer, bufferRef, &runBuffer) !=
      napi_ok) {
    // Node may already have run FinalizeRunBuffer on this failure: leave bufferRef alone.
    if (!env.IsExceptionPending()) ThrowArg(env, op, "could not wrap kvm_run as an ArrayBuffer");
    return env.Undefined();
  }

  // The TSFN keeps the loop alive while the thread exists; Stop() releases it.
  core->tsfn_ = ExitTsfn::New(env, info[2].As<Napi::Function>(), "baton-vcpu", 0 /* unbounded queue */, 1,
                              new CoreRef(core), [](Napi::Env, void*, CoreRef* ctx) { delete ctx; });
  if (!core->tsfn_) {
    if (!env.IsExceptionPending()) ThrowArg(env, op, "could not create the exit callback");
    return env.Undefined();
  }

  // Start the thread with every signal blocked (it unblocks only the kick signal).
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  int err = pthread_create(&core->thread_, nullptr, ThreadEntry, core.get());
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (err != 0) {
    core->Stop();  // releases the TSFN
    return ThrowErrno(env, "pthread_create", err);
  }
  core->threadStarted_ = true;
  {
    std::unique_lock<std::mutex> lock(core->mutex_);
    core->wake_.wait(lock, [&] { return core->tid_.load() != 0; });
  }
  core->envData_ = envData;
  envData->live.insert(core.get());

  CoreRef* handoff = new CoreRef(core);
  Napi::External<CoreRef> external =
      Napi::External<CoreRef>::New(env, handoff, [](Napi::Env, CoreRef* ref) { delete ref; });
  Napi::Object thread = envData->constructor.New({external, Napi::Value(env, runBuffer)});
  if (thread.IsEmpty()) {
    core->Stop();
    return env.Undefined();
  }
  return thread;
}

void StopAllAtTeardown(EnvData* envData) {
  // Stop() erases from the set: iterate over a copy.
  std::set<VcpuCore*> live = envData->live;
  for (VcpuCore* core : live) core->Stop();
  envData->constructor.SuppressDestruct();
  delete envData;
}

}  // namespace

void InitVcpu(Napi::Env env, Napi::Object exports) {
  EnvData* envData = new EnvData();
  envData->constructor = Napi::Persistent(VcpuThread::DefineClass(env));
  env.AddCleanupHook(StopAllAtTeardown, envData);
  exports.Set("vcpuThreadStart", Napi::Function::New(env, VcpuThreadStart, "vcpuThreadStart", envData));
  exports.Set("vcpuKickSignal", Napi::Number::New(env, KickSignal()));
}

}  // namespace baton
