// Scheduling class and CPU affinity of one thread of this process (sched_setattr and
// sched_setaffinity on a tid): which of the hypervisor's threads the host scheduler should
// favour, and where they may run, is policy decided in TypeScript (src/hypervisor/host-threads.ts).
#include <linux/sched.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "errors.h"
#include "io_args.h"

namespace baton {
namespace {

// The kernel's struct sched_attr (include/uapi/linux/sched/types.h), spelled out because
// glibc 2.36 does not declare it; the size field tells the kernel which version this is.
struct SchedAttr {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime;
  uint64_t sched_deadline;
  uint64_t sched_period;
};

// threadSetScheduling(tid, policy: 'normal' | 'idle'): the thread keeps its nice value and gets
// the kernel's default slice (sched_getattr reports the slice in sched_runtime, and since Linux
// 6.12 setting it back would make it a custom one).
Napi::Value ThreadSetScheduling(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "sched_setattr";
  int64_t tid;
  if (!io::GetInt(info, 0, op, "tid", 1, INT32_MAX, &tid)) return env.Undefined();
  if (!info[1].IsString()) return ThrowArg(env, op, "policy must be 'normal' or 'idle'");
  std::string policy = info[1].As<Napi::String>().Utf8Value();
  if (policy != "normal" && policy != "idle") return ThrowArg(env, op, "policy must be 'normal' or 'idle'");
  SchedAttr attr;
  memset(&attr, 0, sizeof attr);
  if (syscall(SYS_sched_getattr, static_cast<pid_t>(tid), &attr, sizeof attr, 0) < 0) return ThrowErrno(env, "sched_getattr", errno);
  attr.size = sizeof attr;
  attr.sched_flags = 0;
  attr.sched_policy = policy == "idle" ? SCHED_IDLE : SCHED_NORMAL;
  attr.sched_priority = 0;
  attr.sched_runtime = attr.sched_deadline = attr.sched_period = 0;
  if (syscall(SYS_sched_setattr, static_cast<pid_t>(tid), &attr, 0) < 0) return ThrowErrno(env, op, errno);
  return env.Undefined();
}

// threadSetAffinity(tid, cpus: number[]): the thread may run only on these host CPUs.
Napi::Value ThreadSetAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "sched_setaffinity";
  int64_t tid;
  if (!io::GetInt(info, 0, op, "tid", 1, INT32_MAX, &tid)) return env.Undefined();
  if (!info[1].IsArray() || info[1].As<Napi::Array>().Length() == 0) return ThrowArg(env, op, "cpus must be a non-empty array of CPU numbers");
  Napi::Array cpus = info[1].As<Napi::Array>();
  cpu_set_t set;
  CPU_ZERO(&set);
  for (uint32_t i = 0; i < cpus.Length(); i++) {
    Napi::Value v = cpus.Get(i);
    if (!v.IsNumber()) return ThrowArg(env, op, "cpus must be a non-empty array of CPU numbers");
    double cpu = v.As<Napi::Number>().DoubleValue();
    if (cpu < 0 || cpu >= CPU_SETSIZE || cpu != static_cast<int>(cpu)) return ThrowArg(env, op, "CPU number out of range 0-1023");
    CPU_SET(static_cast<int>(cpu), &set);
  }
  if (sched_setaffinity(static_cast<pid_t>(tid), sizeof set, &set) < 0) return ThrowErrno(env, op, errno);
  return env.Undefined();
}

}  // namespace

void InitSched(Napi::Env env, Napi::Object exports) {
  exports.Set("threadSetScheduling", Napi::Function::New(env, ThreadSetScheduling, "threadSetScheduling"));
  exports.Set("threadSetAffinity", Napi::Function::New(env, ThreadSetAffinity, "threadSetAffinity"));
}

}  // namespace baton
