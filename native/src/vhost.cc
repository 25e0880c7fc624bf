// vhost-net: the in-kernel virtio-net data path, one wrapper per ioctl of <linux/vhost.h>.
// See src/native/API.md, "vhost-net". /dev/vhost-net exists only with CONFIG_VHOST_NET.
#include <errno.h>
#include <fcntl.h>
// <linux/virtio_ring.h> (pulled in by vhost.h) has legacy C helpers that do not compile as
// C++; we need none of them.
#define VIRTIO_RING_NO_LEGACY
#include <linux/vhost.h>
#include <napi.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>

#include "errors.h"
#include "io_args.h"

namespace baton {
namespace {

using io::GetFd;
using io::GetInt;

constexpr const char* kDefaultVhostNetPath = "/dev/vhost-net";
// The kernel's default vhost max_mem_regions is 64 (module parameter, up to 509); more
// than this is refused here rather than by a huge allocation.
constexpr uint32_t kMaxMemRegions = 509;

Napi::Value VhostNetOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = kDefaultVhostNetPath;
  if (!info[0].IsUndefined()) {
    if (!io::GetString(info, 0, "open", "path", &path)) return env.Undefined();
  }
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, ("open(" + path + ")").c_str(), errno);
  return Napi::Number::New(env, fd);
}

// An ioctl whose argument is a pointer to `arg` (or, for _IO ioctls, nothing).
template <typename T>
Napi::Value Ioctl(Napi::Env env, int fd, unsigned long request, const char* op, T* arg) {
  if (ioctl(fd, request, arg) < 0) return ThrowErrno(env, op, errno);
  return env.Undefined();
}

Napi::Value VhostSetOwner(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "VHOST_SET_OWNER", &fd)) return env.Undefined();
  if (ioctl(fd, VHOST_SET_OWNER) < 0) return ThrowErrno(env, "VHOST_SET_OWNER", errno);
  return env.Undefined();
}

Napi::Value VhostGetFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!GetFd(info, 0, "VHOST_GET_FEATURES", &fd)) return env.Undefined();
  uint64_t features = 0;
  if (ioctl(fd, VHOST_GET_FEATURES, &features) < 0) return ThrowErrno(env, "VHOST_GET_FEATURES", errno);
  return Napi::BigInt::New(env, features);
}

Napi::Value VhostSetFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "VHOST_SET_FEATURES";
  int fd;
  uint64_t features;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!io::GetU64(env, info[1], op, "features", &features)) return env.Undefined();
  return Ioctl(env, fd, VHOST_SET_FEATURES, op, &features);
}

// vhostSetMemTable(fd, [{guestPhysAddr, memorySize, userspaceAddr}]): where guest RAM is
// in this process, so the kernel can follow the rings' guest-physical addresses.
Napi::Value VhostSetMemTable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "VHOST_SET_MEM_TABLE";
  int fd;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!info[1].IsArray()) return ThrowArg(env, op, "regions must be an array");
  Napi::Array regions = info[1].As<Napi::Array>();
  uint32_t count = regions.Length();
  if (count > kMaxMemRegions) {
    return ThrowArg(env, op, "at most " + std::to_string(kMaxMemRegions) + " regions");
  }
  size_t size = sizeof(struct vhost_memory) + count * sizeof(struct vhost_memory_region);
  std::unique_ptr<uint8_t[]> storage(new uint8_t[size]());
  auto* table = reinterpret_cast<struct vhost_memory*>(storage.get());
  table->nregions = count;
  for (uint32_t i = 0; i < count; i++) {
    Napi::Value entry = regions.Get(i);
    if (!entry.IsObject()) return ThrowArg(env, op, "regions[" + std::to_string(i) + "] must be an object");
    Napi::Object region = entry.As<Napi::Object>();
    std::string at = "regions[" + std::to_string(i) + "].";
    uint64_t guest_phys_addr, memory_size, userspace_addr;
    if (!io::GetU64(env, region.Get("guestPhysAddr"), op, (at + "guestPhysAddr").c_str(), &guest_phys_addr) ||
        !io::GetU64(env, region.Get("memorySize"), op, (at + "memorySize").c_str(), &memory_size) ||
        !io::GetU64(env, region.Get("userspaceAddr"), op, (at + "userspaceAddr").c_str(), &userspace_addr)) {
      return env.Undefined();
    }
    table->regions[i].guest_phys_addr = guest_phys_addr;
    table->regions[i].memory_size = memory_size;
    table->regions[i].userspace_addr = userspace_addr;
  }
  return Ioctl(env, fd, VHOST_SET_MEM_TABLE, op, table);
}

// The (fd, index, num) ioctls on struct vhost_vring_state.
Napi::Value VringState(const Napi::CallbackInfo& info, unsigned long request, const char* op) {
  Napi::Env env = info.Env();
  int fd;
  int64_t index, num;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!GetInt(info, 1, op, "index", 0, UINT32_MAX, &index)) return env.Undefined();
  if (!GetInt(info, 2, op, "num", 0, UINT32_MAX, &num)) return env.Undefined();
  struct vhost_vring_state state = {static_cast<unsigned int>(index), static_cast<unsigned int>(num)};
  return Ioctl(env, fd, request, op, &state);
}

Napi::Value VhostSetVringNum(const Napi::CallbackInfo& info) {
  return VringState(info, VHOST_SET_VRING_NUM, "VHOST_SET_VRING_NUM");
}

Napi::Value VhostSetVringBase(const Napi::CallbackInfo& info) {
  return VringState(info, VHOST_SET_VRING_BASE, "VHOST_SET_VRING_BASE");
}

// vhostGetVringBase(fd, index) -> the ring's next avail index (stops the ring in the kernel).
Napi::Value VhostGetVringBase(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "VHOST_GET_VRING_BASE";
  int fd;
  int64_t index;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!GetInt(info, 1, op, "index", 0, UINT32_MAX, &index)) return env.Undefined();
  struct vhost_vring_state state = {static_cast<unsigned int>(index), 0};
  if (ioctl(fd, VHOST_GET_VRING_BASE, &state) < 0) return ThrowErrno(env, op, errno);
  return Napi::Number::New(env, state.num);
}

// vhostSetVringAddr(fd, index, {descUserAddr, availUserAddr, usedUserAddr, logGuestAddr?, flags?})
// Ring addresses are in this process's address space (guest RAM mapping + offset).
Napi::Value VhostSetVringAddr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "VHOST_SET_VRING_ADDR";
  int fd;
  int64_t index;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!GetInt(info, 1, op, "index", 0, UINT32_MAX, &index)) return env.Undefined();
  if (!info[2].IsObject()) return ThrowArg(env, op, "addr must be an object");
  Napi::Object addr = info[2].As<Napi::Object>();
  struct vhost_vring_addr out;
  memset(&out, 0, sizeof out);
  out.index = static_cast<unsigned int>(index);
  uint64_t flags = 0, desc, avail, used, log = 0;
  if (!io::GetU64(env, addr.Get("descUserAddr"), op, "descUserAddr", &desc) ||
      !io::GetU64(env, addr.Get("availUserAddr"), op, "availUserAddr", &avail) ||
      !io::GetU64(env, addr.Get("usedUserAddr"), op, "usedUserAddr", &used)) {
    return env.Undefined();
  }
  if (!addr.Get("logGuestAddr").IsUndefined() &&
      !io::GetU64(env, addr.Get("logGuestAddr"), op, "logGuestAddr", &log)) {
    return env.Undefined();
  }
  if (!addr.Get("flags").IsUndefined() && !io::GetU64(env, addr.Get("flags"), op, "flags", &flags)) {
    return env.Undefined();
  }
  if (flags > UINT32_MAX) return ThrowArg(env, op, "flags must fit in 32 bits");
  out.flags = static_cast<unsigned int>(flags);
  out.desc_user_addr = desc;
  out.avail_user_addr = avail;
  out.used_user_addr = used;
  out.log_guest_addr = log;
  return Ioctl(env, fd, VHOST_SET_VRING_ADDR, op, &out);
}

// The (fd, index, otherFd) ioctls on struct vhost_vring_file; otherFd -1 unbinds.
Napi::Value VringFile(const Napi::CallbackInfo& info, unsigned long request, const char* op) {
  Napi::Env env = info.Env();
  int fd;
  int64_t index, other;
  if (!GetFd(info, 0, op, &fd)) return env.Undefined();
  if (!GetInt(info, 1, op, "index", 0, UINT32_MAX, &index)) return env.Undefined();
  if (!GetInt(info, 2, op, "fd", -1, INT32_MAX, &other)) return env.Undefined();
  struct vhost_vring_file file = {static_cast<unsigned int>(index), static_cast<int>(other)};
  return Ioctl(env, fd, request, op, &file);
}

Napi::Value VhostSetVringKick(const Napi::CallbackInfo& info) {
  return VringFile(info, VHOST_SET_VRING_KICK, "VHOST_SET_VRING_KICK");
}

Napi::Value VhostSetVringCall(const Napi::CallbackInfo& info) {
  return VringFile(info, VHOST_SET_VRING_CALL, "VHOST_SET_VRING_CALL");
}

Napi::Value VhostNetSetBackend(const Napi::CallbackInfo& info) {
  return VringFile(info, VHOST_NET_SET_BACKEND, "VHOST_NET_SET_BACKEND");
}

Napi::Object VhostConstants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  c.Set("VHOST_FILE_UNBIND", Napi::Number::New(env, VHOST_FILE_UNBIND));
  c.Set("VHOST_VRING_F_LOG", Napi::Number::New(env, VHOST_VRING_F_LOG));
  c.Set("VHOST_F_LOG_ALL", Napi::Number::New(env, VHOST_F_LOG_ALL));
  c.Set("VHOST_NET_F_VIRTIO_NET_HDR", Napi::Number::New(env, VHOST_NET_F_VIRTIO_NET_HDR));
  c.Freeze();
  return c;
}

}  // namespace

void InitVhost(Napi::Env env, Napi::Object exports) {
  exports.Set("vhostNetOpen", Napi::Function::New(env, VhostNetOpen, "vhostNetOpen"));
  exports.Set("vhostSetOwner", Napi::Function::New(env, VhostSetOwner, "vhostSetOwner"));
  exports.Set("vhostGetFeatures", Napi::Function::New(env, VhostGetFeatures, "vhostGetFeatures"));
  exports.Set("vhostSetFeatures", Napi::Function::New(env, VhostSetFeatures, "vhostSetFeatures"));
  exports.Set("vhostSetMemTable", Napi::Function::New(env, VhostSetMemTable, "vhostSetMemTable"));
  exports.Set("vhostSetVringNum", Napi::Function::New(env, VhostSetVringNum, "vhostSetVringNum"));
  exports.Set("vhostSetVringBase", Napi::Function::New(env, VhostSetVringBase, "vhostSetVringBase"));
  exports.Set("vhostGetVringBase", Napi::Function::New(env, VhostGetVringBase, "vhostGetVringBase"));
  exports.Set("vhostSetVringAddr", Napi::Function::New(env, VhostSetVringAddr, "vhostSetVringAddr"));
  exports.Set("vhostSetVringKick", Napi::Function::New(env, VhostSetVringKick, "vhostSetVringKick"));
  exports.Set("vhostSetVringCall", Napi::Function::New(env, VhostSetVringCall, "vhostSetVringCall"));
  exports.Set("vhostNetSetBackend", Napi::Function::New(env, VhostNetSetBackend, "vhostNetSetBackend"));
  exports.Set("vhostConstants", VhostConstants(env));
}

}  // namespace baton
