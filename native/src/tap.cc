// TAP devices through /dev/net/tun: one wrapper per ioctl. See src/native/API.md, "TAP".
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <napi.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "errors.h"
#include "io_args.h"

// UDP segmentation offload flags arrived in Linux 6.2; the build host's headers may be older.
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

namespace baton {
namespace {

using io::GetFd;
using io::GetInt;

constexpr const char* kDefaultTunPath = "/dev/net/tun";

// tapOpen(ifname, {vnetHdr?, multiQueue?, tunPath?}) -> {fd, ifname}
// The fd is O_NONBLOCK|O_CLOEXEC; the device is always IFF_TAP|IFF_NO_PI. The interface
// is created in the network namespace of the calling process (the one open() ran in).
Napi::Value TapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "TUNSETIFF";
  std::string ifname;
  if (!io::GetString(info, 0, op, "ifname", &ifname)) return env.Undefined();
  if (ifname.size() >= IFNAMSIZ || ifname.find('\0') != std::string::npos) {
    return ThrowArg(env, op, "ifname '" + ifname + "' must be shorter than " + std::to_string(IFNAMSIZ) +
                                 " bytes (or '' to let the kernel pick)");
  }
  Napi::Object opts;
  if (!io::GetOptions(info, 1, op, &opts)) return env.Undefined();
  bool vnet_hdr, multi_queue;
  if (!io::GetOptBool(env, opts.Get("vnetHdr"), op, "vnetHdr", false, &vnet_hdr)) return env.Undefined();
  if (!io::GetOptBool(env, opts.Get("multiQueue"), op, "multiQueue", false, &multi_queue)) return env.Undefined();
  std::string tun_path = kDefaultTunPath;
  Napi::Value path_value = opts.Get("tunPath");
  if (!path_value.IsUndefined()) {
    if (!path_value.IsString()) return ThrowArg(env, op, "tunPath must be a string");
    tun_path = path_value.As<Napi::String>().Utf8Value();
  }

  int fd = open(tun_path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, ("open(" + tun_path + ")").c_str(), errno);

  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, ifname.data(), ifname.size());
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0) | (multi_queue ? IFF_MULTI_QUEUE : 0);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, op, err);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", Napi::Number::New(env, fd));
  result.Set("ifname", io::IfnameValue(env, ifr.ifr_name, IFNAMSIZ));
  return result;
}

// tapGetIff(fd) -> {ifname, flags}
Napi::Value TapGetIff(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "TUNGETIFF", &fd)) return env.Undefined();
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  if (ioctl(fd, TUNGETIFF, &ifr) < 0) return ThrowErrno(env, "TUNGETIFF", errno);
  Napi::Object result = Napi::Object::New(env);
  result.Set("ifname", io::IfnameValue(env, ifr.ifr_name, IFNAMSIZ));
  result.Set("flags", Napi::Number::New(env, static_cast<uint16_t>(ifr.ifr_flags)));
  return result;
}

// tapGetFeatures(fd) -> IFF_* flags the kernel's tun driver supports.
Napi::Value TapGetFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "TUNGETFEATURES", &fd)) return env.Undefined();
  unsigned int features = 0;
  if (ioctl(fd, TUNGETFEATURES, &features) < 0) return ThrowErrno(env, "TUNGETFEATURES", errno);
  return Napi::Number::New(env, features);
}

// tapSetOffload(fd, TUN_F_* flags): which offloads the reader (our virtio-net) accepts.
Napi::Value TapSetOffload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t flags;
  if (!GetFd(info, 0, "TUNSETOFFLOAD", &fd)) return env.Undefined();
  if (!GetInt(info, 1, "TUNSETOFFLOAD", "flags", 0, UINT32_MAX, &flags)) return env.Undefined();
  if (ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(flags)) < 0) {
    return ThrowErrno(env, "TUNSETOFFLOAD", errno);
  }
  return env.Undefined();
}

Napi::Value TapSetVnetHdrSz(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t size;
  if (!GetFd(info, 0, "TUNSETVNETHDRSZ", &fd)) return env.Undefined();
  if (!GetInt(info, 1, "TUNSETVNETHDRSZ", "size", 0, INT32_MAX, &size)) return env.Undefined();
  int value = static_cast<int>(size);
  if (ioctl(fd, TUNSETVNETHDRSZ, &value) < 0) return ThrowErrno(env, "TUNSETVNETHDRSZ", errno);
  return env.Undefined();
}

Napi::Value TapGetVnetHdrSz(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "TUNGETVNETHDRSZ", &fd)) return env.Undefined();
  int value = 0;
  if (ioctl(fd, TUNGETVNETHDRSZ, &value) < 0) return ThrowErrno(env, "TUNGETVNETHDRSZ", errno);
  return Napi::Number::New(env, value);
}

// tapSetQueue(fd, attach): enable or disable this queue of a multiqueue TAP.
Napi::Value TapSetQueue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "TUNSETQUEUE", &fd)) return env.Undefined();
  if (!info[1].IsBoolean()) return ThrowArg(env, "TUNSETQUEUE", "attach must be a boolean");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = info[1].As<Napi::Boolean>().Value() ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
  if (ioctl(fd, TUNSETQUEUE, &ifr) < 0) return ThrowErrno(env, "TUNSETQUEUE", errno);
  return env.Undefined();
}

// tapSetPersist(fd, on): whether the interface outlives its last fd.
Napi::Value TapSetPersist(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "TUNSETPERSIST", &fd)) return env.Undefined();
  if (!info[1].IsBoolean()) return ThrowArg(env, "TUNSETPERSIST", "on must be a boolean");
  unsigned long on = info[1].As<Napi::Boolean>().Value() ? 1 : 0;
  if (ioctl(fd, TUNSETPERSIST, on) < 0) return ThrowErrno(env, "TUNSETPERSIST", errno);
  return env.Undefined();
}

// tapSetSndbuf(fd, bytes): how much the kernel queues towards the reader before dropping.
Napi::Value TapSetSndbuf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t bytes;
  if (!GetFd(info, 0, "TUNSETSNDBUF", &fd)) return env.Undefined();
  if (!GetInt(info, 1, "TUNSETSNDBUF", "bytes", 1, INT32_MAX, &bytes)) return env.Undefined();
  int value = static_cast<int>(bytes);
  if (ioctl(fd, TUNSETSNDBUF, &value) < 0) return ThrowErrno(env, "TUNSETSNDBUF", errno);
  return env.Undefined();
}

Napi::Object TapConstants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
#define CONST(name) c.Set(#name, Napi::Number::New(env, name));
  CONST(IFF_TUN) CONST(IFF_TAP) CONST(IFF_NAPI) CONST(IFF_NAPI_FRAGS) CONST(IFF_NO_PI)
  CONST(IFF_ONE_QUEUE) CONST(IFF_VNET_HDR) CONST(IFF_TUN_EXCL) CONST(IFF_MULTI_QUEUE)
  CONST(IFF_ATTACH_QUEUE) CONST(IFF_DETACH_QUEUE) CONST(IFF_PERSIST) CONST(IFF_NOFILTER)
  CONST(TUN_F_CSUM) CONST(TUN_F_TSO4) CONST(TUN_F_TSO6) CONST(TUN_F_TSO_ECN) CONST(TUN_F_UFO)
  CONST(TUN_F_USO4) CONST(TUN_F_USO6) CONST(IFNAMSIZ)
#undef CONST
  c.Freeze();
  return c;
}

}  // namespace

void InitTap(Napi::Env env, Napi::Object exports) {
  exports.Set("tapOpen", Napi::Function::New(env, TapOpen, "tapOpen"));
  exports.Set("tapGetIff", Napi::Function::New(env, TapGetIff, "tapGetIff"));
  exports.Set("tapGetFeatures", Napi::Function::New(env, TapGetFeatures, "tapGetFeatures"));
  exports.Set("tapSetOffload", Napi::Function::New(env, TapSetOffload, "tapSetOffload"));
  exports.Set("tapSetVnetHdrSz", Napi::Function::New(env, TapSetVnetHdrSz, "tapSetVnetHdrSz"));
  exports.Set("tapGetVnetHdrSz", Napi::Function::New(env, TapGetVnetHdrSz, "tapGetVnetHdrSz"));
  exports.Set("tapSetQueue", Napi::Function::New(env, TapSetQueue, "tapSetQueue"));
  exports.Set("tapSetPersist", Napi::Function::New(env, TapSetPersist, "tapSetPersist"));
  exports.Set("tapSetSndbuf", Napi::Function::New(env, TapSetSndbuf, "tapSetSndbuf"));
  exports.Set("tapConstants", TapConstants(env));
}

}  // namespace baton
