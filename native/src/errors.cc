#include "errors.h"

#include <cerrno>
#include <cstring>
#include <string>

namespace baton {

const char* ErrnoName(int err) {
  switch (err) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(ENOEXEC) E(EBADF)
    E(ECHILD) E(EAGAIN) E(ENOMEM) E(EACCES) E(EFAULT) E(EBUSY) E(EEXIST) E(EXDEV)
    E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENFILE) E(EMFILE) E(ENOTTY) E(EFBIG)
    E(ENOSPC) E(ESPIPE) E(EROFS) E(EPIPE) E(ERANGE) E(ENAMETOOLONG) E(ENOSYS)
    E(ENOTSOCK) E(EMSGSIZE) E(EPROTOTYPE) E(EOPNOTSUPP) E(EADDRINUSE) E(EADDRNOTAVAIL)
    E(ENETDOWN) E(ECONNRESET) E(ENOBUFS) E(EISCONN) E(ENOTCONN) E(ETIMEDOUT)
    E(ECONNREFUSED) E(EALREADY) E(EINPROGRESS) E(EBADFD)
#undef E
    default: {
      static thread_local char buf[24];
      snprintf(buf, sizeof buf, "E%d", err);
      return buf;
    }
  }
}

Napi::Value ThrowErrno(Napi::Env env, const char* operation, int err) {
  std::string msg = std::string(operation) + " failed: " + ErrnoName(err) + " (" + strerror(err) + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, operation));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowArg(Napi::Env env, const char* operation, const std::string& what) {
  Napi::TypeError e = Napi::TypeError::New(env, std::string(operation) + ": " + what);
  e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG"));
  e.Set("syscall", Napi::String::New(env, operation));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

}  // namespace baton
