// UNIX stream sockets that carry file descriptors (SCM_RIGHTS). All sockets are
// non-blocking and close-on-exec, and so are received fds. See src/native/API.md,
// "UNIX sockets with fds".
#include <errno.h>
#include <fcntl.h>
#include <napi.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"
#include "io_args.h"

namespace baton {
namespace {

using io::GetFd;
using io::GetInt;

// The kernel's SCM_MAX_FD: most fds one message may carry.
constexpr int kMaxFdsPerMessage = 253;
// Largest single recvmsg the wrapper will allocate for.
constexpr int64_t kMaxRecvBytes = 64 * 1024 * 1024;

constexpr int kSocketFlags = SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC;

// Fills a sockaddr_un from a path; a leading '\0' names an abstract socket.
bool MakeAddress(const Napi::CallbackInfo& info, const char* op, struct sockaddr_un* addr, socklen_t* len) {
  std::string path;
  if (!io::GetString(info, 0, op, "path", &path)) return false;
  if (path.empty() || path.size() >= sizeof addr->sun_path) {
    ThrowArg(info.Env(), op,
             "path must be 1.." + std::to_string(sizeof addr->sun_path - 1) + " bytes long, got " +
                 std::to_string(path.size()) + " ('" + path + "'); use a shorter directory");
    return false;
  }
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  memcpy(addr->sun_path, path.data(), path.size());
  bool abstract = path[0] == '\0';
  *len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1));
  return true;
}

Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct sockaddr_un addr;
  socklen_t len;
  int64_t backlog;
  if (!MakeAddress(info, "bind", &addr, &len)) return env.Undefined();
  if (!GetInt(info, 1, "listen", "backlog", 0, 65535, &backlog)) return env.Undefined();
  int fd = socket(AF_UNIX, kSocketFlags, 0);
  if (fd < 0) return ThrowErrno(env, "socket", errno);
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&addr), len) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "bind", err);
  }
  if (listen(fd, static_cast<int>(backlog)) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "listen", err);
  }
  return Napi::Number::New(env, fd);
}

// unixAccept(fd) -> fd, or -1 when no connection is pending.
Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "accept4", &fd)) return env.Undefined();
  for (;;) {
    int conn = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (conn >= 0) return Napi::Number::New(env, conn);
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    return ThrowErrno(env, "accept4", errno);
  }
}

// unixConnect(path) -> fd. A UNIX connect completes at once or fails: EAGAIN means the
// listener's backlog is full (try again later), ECONNREFUSED that nobody listens.
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct sockaddr_un addr;
  socklen_t len;
  if (!MakeAddress(info, "connect", &addr, &len)) return env.Undefined();
  int fd = socket(AF_UNIX, kSocketFlags, 0);
  if (fd < 0) return ThrowErrno(env, "socket", errno);
  int rc;
  do rc = connect(fd, reinterpret_cast<struct sockaddr*>(&addr), len);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "connect", err);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value UnixSocketpair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (socketpair(AF_UNIX, kSocketFlags, 0, fds) < 0) return ThrowErrno(env, "socketpair", errno);
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, fds[0]));
  result.Set(1u, Napi::Number::New(env, fds[1]));
  return result;
}

// sendmsgFds(fd, data, fds) -> bytes sent, or -1 when the socket is full (EAGAIN).
// The fds travel with the first byte; a short send means the rest of `data` must be sent
// again without fds.
Napi::Value SendmsgFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "sendmsg";
  int fd;
  io::Bytes data;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!io::GetBytes(env, info[1], op, "data", &data)) return env.Undefined();
  if (!info[2].IsArray()) return ThrowArg(env, op, "fds must be an array of fd numbers");
  Napi::Array fd_array = info[2].As<Napi::Array>();
  uint32_t nfds = fd_array.Length();
  if (nfds > kMaxFdsPerMessage) {
    return ThrowArg(env, op, "at most " + std::to_string(kMaxFdsPerMessage) + " fds per message, got " +
                                 std::to_string(nfds));
  }
  if (nfds > 0 && data.length == 0) {
    return ThrowArg(env, op, "fds need at least one byte of data to travel with on a stream socket");
  }
  int passed[kMaxFdsPerMessage];
  for (uint32_t i = 0; i < nfds; i++) {
    Napi::Value v = fd_array.Get(i);
    double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d <= INT32_MAX && static_cast<double>(static_cast<int>(d)) == d)) {
      return ThrowArg(env, op, "fds[" + std::to_string(i) + "] is not an fd number");
    }
    passed[i] = static_cast<int>(d);
  }

  struct iovec iov = {data.data, data.length};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  if (nfds > 0) {
    memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cmsg), passed, sizeof(int) * nfds);
  }
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, -1);
    return ThrowErrno(env, op, errno);
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) close(fd);
}

// recvmsgFds(fd, maxBytes, maxFds) -> {data, fds} | null (EAGAIN); empty data means EOF.
// More fds than maxFds (or hitting RLIMIT_NOFILE) truncates the control data: that is
// thrown as an error, after closing the fds that did arrive.
Napi::Value RecvmsgFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "recvmsg";
  int fd;
  int64_t max_bytes, max_fds;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!GetInt(info, 1, op, "maxBytes", 1, kMaxRecvBytes, &max_bytes)) return env.Undefined();
  if (!GetInt(info, 2, op, "maxFds", 0, kMaxFdsPerMessage, &max_fds)) return env.Undefined();

  std::unique_ptr<uint8_t[]> buffer(new uint8_t[max_bytes]);
  struct iovec iov = {buffer.get(), static_cast<size_t>(max_bytes)};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (max_fds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * max_fds);
  }
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    return ThrowErrno(env, op, errno);
  }

  std::vector<int> received;
  for (struct cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* p = CMSG_DATA(cmsg);
    for (size_t i = 0; i < count; i++) {
      int received_fd;
      memcpy(&received_fd, p + i * sizeof(int), sizeof(int));
      received.push_back(received_fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    CloseAll(received);
    std::string text = std::string(op) + " on fd " + std::to_string(fd) +
                       ": control data truncated (MSG_CTRUNC): the peer sent more than maxFds=" +
                       std::to_string(max_fds) +
                       " fds, or this process hit RLIMIT_NOFILE; the fds that arrived were closed "
                       "and the message's data dropped";
    Napi::Error e = Napi::Error::New(env, text);
    e.Set("code", Napi::String::New(env, "EMSGSIZE"));
    e.Set("errno", Napi::Number::New(env, EMSGSIZE));
    e.Set("syscall", Napi::String::New(env, op));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }

  Napi::Object result = Napi::Object::New(env);
  result.Set("data", Napi::Buffer<uint8_t>::Copy(env, buffer.get(), static_cast<size_t>(n)));
  Napi::Array fds = Napi::Array::New(env, received.size());
  for (size_t i = 0; i < received.size(); i++) fds.Set(static_cast<uint32_t>(i), Napi::Number::New(env, received[i]));
  result.Set("fds", fds);
  return result;
}

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "getsockopt(SO_PEERCRED)", &fd)) return env.Undefined();
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
    return ThrowErrno(env, "getsockopt(SO_PEERCRED)", errno);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("pid", Napi::Number::New(env, cred.pid));
  result.Set("uid", Napi::Number::New(env, cred.uid));
  result.Set("gid", Napi::Number::New(env, cred.gid));
  return result;
}

}  // namespace

void InitUnixSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept, "unixAccept"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("unixSocketpair", Napi::Function::New(env, UnixSocketpair, "unixSocketpair"));
  exports.Set("sendmsgFds", Napi::Function::New(env, SendmsgFds, "sendmsgFds"));
  exports.Set("recvmsgFds", Napi::Function::New(env, RecvmsgFds, "recvmsgFds"));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("maxFdsPerMessage", Napi::Number::New(env, kMaxFdsPerMessage));
}

}  // namespace baton
