// File descriptors, eventfd, readiness (libuv poll) and batched zero-copy readv/writev.
// See src/native/API.md, section "fds, eventfd, readiness".
#include <errno.h>
#include <fcntl.h>
#include <napi.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uv.h>

#include <cstdint>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "errors.h"
#include "io_args.h"

namespace baton {
namespace {

using io::GetFd;
using io::GetInt;

// ---------------------------------------------------------------------------------------
// fdWatch: a uv_poll_t on the current thread's libuv loop, wrapped as a JS object.
//
// Lifetime: while a watch is active it holds a strong reference to its own JS object (so
// it keeps firing even if the caller drops it, like a Node socket) and its uv handle keeps
// the loop alive. stop() stops and uv_close()s the handle, then drops that reference. The
// uv handle is allocated apart from the JS object because uv_close completes later, on a
// following loop iteration, possibly after the JS object was collected.
//
// The handle polls a private dup of the caller's fd: libuv aborts the process when epoll
// is asked about an fd closed behind its back (e.g. fs.closeSync right after fdWatch), and
// a dup cannot be closed behind our back. The dup keeps the file open until the watch
// stops; close(fd) from this addon stops the fd's watches first.
// ---------------------------------------------------------------------------------------

class FdWatch;

struct PollHandle {
  uv_poll_t uv;
  FdWatch* owner;  // null once the watch let go of it (stop, finalize)
  int poll_fd;     // the private dup that libuv polls; closed with the handle
};

// Active watches on this thread's loop by the caller's fd, so that close(fd) stops them.
thread_local std::unordered_multimap<int, FdWatch*> active_watches_by_fd;

int ParseEvents(const std::string& events) {
  if (events == "r") return UV_READABLE;
  if (events == "w") return UV_WRITABLE;
  if (events == "rw" || events == "wr") return UV_READABLE | UV_WRITABLE;
  return 0;
}

bool GetEvents(const Napi::CallbackInfo& info, size_t index, const char* op, int* out) {
  std::string s;
  if (!io::GetString(info, index, op, "events", &s)) return false;
  *out = ParseEvents(s);
  if (*out == 0) {
    ThrowArg(info.Env(), op, "events must be 'r', 'w' or 'rw'");
    return false;
  }
  return true;
}

class FdWatch : public Napi::ObjectWrap<FdWatch> {
 public:
  static Napi::Function DefineClass(Napi::Env env) {
    return Napi::ObjectWrap<FdWatch>::DefineClass(
        env, "FdWatch",
        {InstanceMethod<&FdWatch::Stop>("stop"), InstanceMethod<&FdWatch::Update>("update"),
         InstanceAccessor<&FdWatch::GetFd>("fd"), InstanceAccessor<&FdWatch::GetActive>("active")});
  }

  // fdWatch() validated the arguments; the check below only guards `new watch.constructor()`.
  FdWatch(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<FdWatch>(info), async_context_(info.Env(), "baton.FdWatch") {
    Napi::Env env = info.Env();
    if (!info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsFunction()) {
      ThrowArg(env, "FdWatch", "create watches with fdWatch(fd, events, cb)");
      return;
    }
    fd_ = info[0].As<Napi::Number>().Int32Value();
    int events = info[1].As<Napi::Number>().Int32Value();
    callback_ = Napi::Persistent(info[2].As<Napi::Function>());

    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "fdWatch: no libuv loop on this thread").ThrowAsJavaScriptException();
      return;
    }
    int poll_fd = fcntl(fd_, F_DUPFD_CLOEXEC, 0);
    if (poll_fd < 0) {
      ThrowErrno(env, "fdWatch", errno);
      return;
    }
    PollHandle* handle = new PollHandle{};
    handle->owner = this;
    handle->poll_fd = poll_fd;
    int rc = uv_poll_init(loop, &handle->uv, poll_fd);
    if (rc != 0) {
      close(poll_fd);
      delete handle;  // never initialised as a handle: no uv_close needed
      ThrowErrno(env, "uv_poll_init", -rc);
      return;
    }
    rc = uv_poll_start(&handle->uv, events, &FdWatch::OnPoll);
    if (rc != 0) {
      handle->owner = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&handle->uv), &FdWatch::OnClosed);
      ThrowErrno(env, "uv_poll_start", -rc);
      return;
    }
    poll_ = handle;
    events_ = events;
    Ref();
    active_watches_by_fd.emplace(fd_, this);
    env_ = env;
    napi_add_env_cleanup_hook(env, &FdWatch::OnEnvCleanup, this);
  }

  ~FdWatch() override { ReleaseHandle(); }

  // Stops watching; idempotent, and safe from inside the watch's own callback.
  void StopWatching() {
    if (poll_ == nullptr) return;
    ReleaseHandle();
    napi_remove_env_cleanup_hook(env_, &FdWatch::OnEnvCleanup, this);
    callback_.Reset();
    Unref();
  }

 private:
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopWatching();
    return info.Env().Undefined();
  }

  Napi::Value Update(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int events;
    if (!GetEvents(info, 0, "FdWatch.update", &events)) return env.Undefined();
    if (poll_ == nullptr) {
      Napi::Error::New(env, "FdWatch.update: the watch on fd " + std::to_string(fd_) +
                                " is stopped; create a new one with fdWatch()")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    int rc = uv_poll_start(&poll_->uv, events, &FdWatch::OnPoll);
    if (rc != 0) return ThrowErrno(env, "uv_poll_start", -rc);
    events_ = events;
    return env.Undefined();
  }

  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value GetActive(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), poll_ != nullptr);
  }

  // Stops and closes the uv handle without touching JS (usable from the destructor).
  void ReleaseHandle() {
    if (poll_ == nullptr) return;
    auto range = active_watches_by_fd.equal_range(fd_);
    for (auto it = range.first; it != range.second; ++it) {
      if (it->second == this) {
        active_watches_by_fd.erase(it);
        break;
      }
    }
    uv_poll_stop(&poll_->uv);
    poll_->owner = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&poll_->uv), &FdWatch::OnClosed);
    poll_ = nullptr;
  }

  static void OnClosed(uv_handle_t* uv) {
    PollHandle* handle = reinterpret_cast<PollHandle*>(uv);  // uv is the first member
    close(handle->poll_fd);
    delete handle;
  }

  // The environment (e.g. a worker thread) is going away with the watch still active:
  // close the handle so the loop can be closed.
  static void OnEnvCleanup(void* arg) { static_cast<FdWatch*>(arg)->ReleaseHandle(); }

  static void OnPoll(uv_poll_t* uv, int status, int events) {
    PollHandle* handle = reinterpret_cast<PollHandle*>(uv);
    FdWatch* self = handle->owner;
    if (self == nullptr) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    bool readable, writable;
    if (status < 0) {
      // POLLERR: libuv has already stopped the handle. Report the fd as ready for what was
      // asked so the owner's read/write sees the actual error, then end the watch.
      readable = (self->events_ & UV_READABLE) != 0;
      writable = (self->events_ & UV_WRITABLE) != 0;
    } else {
      readable = (events & (UV_READABLE | UV_DISCONNECT)) != 0;
      writable = (events & UV_WRITABLE) != 0;
    }
    // The receiver keeps the JS object (and so `self`) alive even if the callback stops
    // the watch, which drops the watch's own reference.
    Napi::Object receiver = self->Value();
    Napi::FunctionReference& cb = self->callback_;
    if (!cb.IsEmpty()) {
      cb.MakeCallback(receiver, {Napi::Boolean::New(env, readable), Napi::Boolean::New(env, writable)},
                      self->async_context_);
      if (env.IsExceptionPending()) {
        // A throwing callback is an uncaught exception, as for any Node I/O callback.
        Napi::Error err = env.GetAndClearPendingException();
        napi_fatal_exception(env, err.Value());
      }
    }
    if (status < 0) self->StopWatching();
  }

  PollHandle* poll_ = nullptr;
  int fd_ = -1;
  int events_ = 0;
  napi_env env_ = nullptr;
  Napi::FunctionReference callback_;
  Napi::AsyncContext async_context_;
};

// fdWatch(fd, events, cb) -> FdWatch. The FdWatch constructor lives in the function's data.
Napi::Value FdWatchCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "fdWatch";
  int fd, events;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!GetEvents(info, 1, op, &events)) return env.Undefined();
  if (!info[2].IsFunction()) return ThrowArg(env, op, "cb must be a function");
  auto* ctor = static_cast<Napi::FunctionReference*>(info.Data());
  return ctor->New({Napi::Number::New(env, fd), Napi::Number::New(env, events), info[2]});
}

// ---------------------------------------------------------------------------------------
// eventfd
// ---------------------------------------------------------------------------------------

Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "eventfd";
  int64_t initval;
  if (!GetInt(info, 0, op, "initval", 0, UINT32_MAX, &initval)) return env.Undefined();
  Napi::Object opts;
  if (!io::GetOptions(info, 1, op, &opts)) return env.Undefined();
  bool nonblock, semaphore;
  if (!io::GetOptBool(env, opts.Get("nonblock"), op, "nonblock", false, &nonblock)) return env.Undefined();
  if (!io::GetOptBool(env, opts.Get("semaphore"), op, "semaphore", false, &semaphore)) return env.Undefined();
  int flags = EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0) | (semaphore ? EFD_SEMAPHORE : 0);
  int fd = eventfd(static_cast<unsigned int>(initval), flags);
  if (fd < 0) return ThrowErrno(env, op, errno);
  return Napi::Number::New(env, fd);
}

Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "eventfd read", &fd)) return env.Undefined();
  uint64_t value;
  ssize_t n;
  do n = read(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    return ThrowErrno(env, "eventfd read", errno);
  }
  if (n != sizeof value) return ThrowErrno(env, "eventfd read", EINVAL);  // not an eventfd
  return Napi::BigInt::New(env, value);
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "eventfd write";
  int fd;
  uint64_t value;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!io::GetU64(env, info[1], op, "value", &value)) return env.Undefined();
  ssize_t n;
  do n = write(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  if (n < 0) return ThrowErrno(env, op, errno);
  if (n != sizeof value) return ThrowErrno(env, op, EINVAL);
  return env.Undefined();
}

// ---------------------------------------------------------------------------------------
// Plain fd operations
// ---------------------------------------------------------------------------------------

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "close", &fd)) return env.Undefined();
  // Stopping erases from the map: take the fd's watches out first.
  std::vector<FdWatch*> watches;
  auto range = active_watches_by_fd.equal_range(fd);
  for (auto it = range.first; it != range.second; ++it) watches.push_back(it->second);
  for (FdWatch* watch : watches) watch->StopWatching();
  // On Linux the fd is released even when close reports EINTR: never retry.
  if (close(fd) < 0 && errno != EINTR) return ThrowErrno(env, "close", errno);
  return env.Undefined();
}

Napi::Value Dup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "dup", &fd)) return env.Undefined();
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return ThrowErrno(env, "dup", errno);
  return Napi::Number::New(env, copy);
}

// Sets or clears one bit of F_GETFL/F_GETFD flags.
Napi::Value SetFdFlag(const Napi::CallbackInfo& info, const char* op, int get_cmd, int set_cmd, int bit) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!info[1].IsBoolean()) return ThrowArg(env, op, "on must be a boolean");
  bool on = info[1].As<Napi::Boolean>().Value();
  int flags = fcntl(fd, get_cmd);
  if (flags < 0) return ThrowErrno(env, op, errno);
  int wanted = on ? (flags | bit) : (flags & ~bit);
  if (wanted != flags && fcntl(fd, set_cmd, wanted) < 0) return ThrowErrno(env, op, errno);
  return env.Undefined();
}

Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  return SetFdFlag(info, "fcntl(O_NONBLOCK)", F_GETFL, F_SETFL, O_NONBLOCK);
}

Napi::Value SetCloexec(const Napi::CallbackInfo& info) {
  return SetFdFlag(info, "fcntl(FD_CLOEXEC)", F_GETFD, F_SETFD, FD_CLOEXEC);
}

Napi::Value FdType(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "fstat", &fd)) return env.Undefined();
  struct stat st;
  if (fstat(fd, &st) < 0) return ThrowErrno(env, "fstat", errno);
  const char* type = "other";
  if (S_ISCHR(st.st_mode)) type = "char";
  else if (S_ISSOCK(st.st_mode)) type = "socket";
  else if (S_ISREG(st.st_mode)) type = "file";
  else if (S_ISFIFO(st.st_mode)) type = "fifo";
  return Napi::String::New(env, type);
}

// Range [off, off+len) of a byte argument, checked against its length.
bool GetRange(const Napi::CallbackInfo& info, const char* op, io::Bytes* bytes, size_t* off, size_t* len) {
  Napi::Env env = info.Env();
  if (!io::GetBytes(env, info[1], op, "buffer", bytes)) return false;
  int64_t o, l;
  if (!GetInt(info, 2, op, "offset", 0, INT64_C(9007199254740991), &o)) return false;
  if (!GetInt(info, 3, op, "length", 0, INT64_C(9007199254740991), &l)) return false;
  if (static_cast<uint64_t>(o) > bytes->length || static_cast<uint64_t>(l) > bytes->length - o) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE",
                           (std::string(op) + ": offset " + std::to_string(o) + " + length " +
                            std::to_string(l) + " is outside the buffer of " +
                            std::to_string(bytes->length) + " bytes")
                               .c_str());
    return false;
  }
  *off = static_cast<size_t>(o);
  *len = static_cast<size_t>(l);
  return true;
}

// read/write: EINTR retried, EAGAIN -> -1, other errors thrown; `io` is the only difference.
template <typename Io>
Napi::Value TransferOnce(const Napi::CallbackInfo& info, const char* op, Io io) {
  Napi::Env env = info.Env();
  int fd;
  io::Bytes bytes;
  size_t off, len;
  if (!GetFd(info, 0, op, &fd) || !GetRange(info, op, &bytes, &off, &len)) return env.Undefined();
  ssize_t n;
  do n = io(fd, bytes.data + off, len);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    return ThrowErrno(env, op, errno);
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Read(const Napi::CallbackInfo& info) {
  return TransferOnce(info, "read", [](int fd, uint8_t* p, size_t n) { return read(fd, p, n); });
}

Napi::Value Write(const Napi::CallbackInfo& info) {
  return TransferOnce(info, "write", [](int fd, uint8_t* p, size_t n) { return write(fd, p, n); });
}

// ---------------------------------------------------------------------------------------
// readvBatch / writevBatch: the virtio-net data path. One readv/writev per packet, iovecs
// pointing straight into the caller's buffer (guest RAM), no allocation per packet.
// ---------------------------------------------------------------------------------------

// Longest descriptor chain accepted for one packet. Linux guests use at most
// MAX_SKB_FRAGS + 2 (19) descriptors per packet; 256 leaves room for odd drivers while the
// iovec array (4 KiB) stays on the stack.
constexpr uint32_t kMaxIovPerPacket = 256;

struct Batch {
  int fd;
  io::Bytes buffer;
  const double* iovs;         // (offset, length) pairs
  const uint32_t* iov_counts;  // iovs per packet
  uint32_t npackets;
};

// Validates every packet's iovecs before any I/O, so a bad entry never leaves a batch
// half-done.
bool GetBatch(const Napi::CallbackInfo& info, const char* op, Batch* batch) {
  Napi::Env env = info.Env();
  if (!GetFd(info, 0, op, &batch->fd)) return false;
  if (!io::GetBytes(env, info[1], op, "buffer", &batch->buffer)) return false;
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    ThrowArg(env, op, "iovs must be a Float64Array of (offset, length) pairs");
    return false;
  }
  if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    ThrowArg(env, op, "iovCounts must be a Uint32Array");
    return false;
  }
  Napi::Float64Array iovs = info[2].As<Napi::Float64Array>();
  Napi::Uint32Array counts = info[3].As<Napi::Uint32Array>();
  int64_t npackets;
  if (!GetInt(info, 4, op, "npackets", 0, counts.ElementLength(), &npackets)) return false;
  batch->iovs = iovs.Data();
  batch->iov_counts = counts.Data();
  batch->npackets = static_cast<uint32_t>(npackets);

  const double buffer_length = static_cast<double>(batch->buffer.length);
  size_t pair = 0;
  const size_t pairs_available = iovs.ElementLength() / 2;
  for (uint32_t p = 0; p < batch->npackets; p++) {
    uint32_t count = batch->iov_counts[p];
    if (count == 0 || count > kMaxIovPerPacket) {
      napi_throw_range_error(env, "ERR_OUT_OF_RANGE",
                             (std::string(op) + ": packet " + std::to_string(p) + " has " +
                              std::to_string(count) + " iovs; allowed 1.." +
                              std::to_string(kMaxIovPerPacket))
                                 .c_str());
      return false;
    }
    if (count > pairs_available - pair) {
      napi_throw_range_error(env, "ERR_OUT_OF_RANGE",
                             (std::string(op) + ": iovCounts asks for more iovs than iovs holds (" +
                              std::to_string(pairs_available) + " pairs)")
                                 .c_str());
      return false;
    }
    for (uint32_t k = 0; k < count; k++, pair++) {
      double off = batch->iovs[2 * pair], len = batch->iovs[2 * pair + 1];
      bool integral = std::floor(off) == off && std::floor(len) == len;
      if (!integral || !(off >= 0) || !(len >= 0) || off + len > buffer_length) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE",
                               (std::string(op) + ": iov " + std::to_string(pair) + " (offset " +
                                std::to_string(off) + ", length " + std::to_string(len) +
                                ") is outside the buffer of " +
                                std::to_string(batch->buffer.length) + " bytes")
                                   .c_str());
        return false;
      }
    }
  }
  return true;
}

// Fills `iov` with packet `p`'s entries starting at pair index `*pair`.
inline void FillIov(const Batch& batch, uint32_t count, size_t* pair, struct iovec* iov) {
  for (uint32_t k = 0; k < count; k++, (*pair)++) {
    iov[k].iov_base = batch.buffer.data + static_cast<size_t>(batch.iovs[2 * *pair]);
    iov[k].iov_len = static_cast<size_t>(batch.iovs[2 * *pair + 1]);
  }
}

// One readv or writev per packet until EAGAIN. An error on the first packet throws; an error
// after some packets returns those packets and the error shows up again on the next call.
// With `lengths_out` (reads), packet i's byte count goes to lengths_out[i] and a 0-byte
// read (end of file on a stream) ends the batch, counted with length 0.
Napi::Value TransferBatch(Napi::Env env, const char* op, const Batch& batch,
                          ssize_t (*vec_io)(int, const struct iovec*, int), int32_t* lengths_out) {
  struct iovec iov[kMaxIovPerPacket];
  size_t pair = 0;
  uint32_t done = 0;
  while (done < batch.npackets) {
    uint32_t count = batch.iov_counts[done];
    FillIov(batch, count, &pair, iov);
    ssize_t n;
    do n = vec_io(batch.fd, iov, static_cast<int>(count));
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || done > 0) break;
      return ThrowErrno(env, op, errno);
    }
    if (lengths_out != nullptr) lengths_out[done] = static_cast<int32_t>(n);
    done++;
    if (n == 0 && lengths_out != nullptr) break;
  }
  return Napi::Number::New(env, done);
}

// readvBatch(fd, buffer, iovs, iovCounts, npackets, lengthsOut) -> packets read.
Napi::Value ReadvBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "readv";
  Batch batch;
  if (!GetBatch(info, op, &batch)) return env.Undefined();
  if (!info[5].IsTypedArray() || info[5].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    return ThrowArg(env, op, "lengthsOut must be an Int32Array");
  }
  Napi::Int32Array lengths = info[5].As<Napi::Int32Array>();
  if (lengths.ElementLength() < batch.npackets) {
    return ThrowArg(env, op, "lengthsOut must have room for npackets entries");
  }
  return TransferBatch(env, op, batch, readv, lengths.Data());
}

// writevBatch(fd, buffer, iovs, iovCounts, npackets) -> packets written.
Napi::Value WritevBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "writev";
  Batch batch;
  if (!GetBatch(info, op, &batch)) return env.Undefined();
  return TransferBatch(env, op, batch, writev, nullptr);
}

}  // namespace

void InitFdio(Napi::Env env, Napi::Object exports) {
  // The FdWatch class is not exported: fdWatch() is the only way to make one. Its
  // constructor reference lives as long as the environment.
  auto* watch_ctor = new Napi::FunctionReference(Napi::Persistent(FdWatch::DefineClass(env)));
  env.AddCleanupHook([watch_ctor]() { delete watch_ctor; });
  exports.Set("fdWatch", Napi::Function::New(env, FdWatchCreate, "fdWatch", watch_ctor));

  exports.Set("eventfdCreate", Napi::Function::New(env, EventfdCreate, "eventfdCreate"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("dup", Napi::Function::New(env, Dup, "dup"));
  exports.Set("setNonBlocking", Napi::Function::New(env, SetNonBlocking, "setNonBlocking"));
  exports.Set("setCloexec", Napi::Function::New(env, SetCloexec, "setCloexec"));
  exports.Set("fdType", Napi::Function::New(env, FdType, "fdType"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("write", Napi::Function::New(env, Write, "write"));
  exports.Set("readvBatch", Napi::Function::New(env, ReadvBatch, "readvBatch"));
  exports.Set("writevBatch", Napi::Function::New(env, WritevBatch, "writevBatch"));
  exports.Set("maxIovPerPacket", Napi::Number::New(env, kMaxIovPerPacket));
}

}  // namespace baton
