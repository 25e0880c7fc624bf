// KVM ioctls, one JS function per kernel operation (contract: src/native/API.md, "KVM").
// Kernel structs that TypeScript only saves and restores travel as raw Buffers of the
// kernel's size; the few structs TypeScript builds field by field are read from objects.
#include <fcntl.h>
#include "kvm_headers.h"
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "kvm_args.h"

namespace baton {

namespace {

// ioctl retried on EINTR: only KVM_RUN (vcpu.cc) gives EINTR a meaning.
int Ioctl(int fd, unsigned long request, unsigned long arg) {
  int r;
  do {
    r = ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}
int Ioctl(int fd, unsigned long request, const void* arg) {
  return Ioctl(fd, request, reinterpret_cast<unsigned long>(arg));
}

Napi::Value Fail(Napi::Env env, const char* op) { return ThrowErrno(env, op, errno); }

// ---- /dev/kvm ----

Napi::Value KvmOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = "/dev/kvm";
  if (!info[0].IsUndefined()) {
    if (!info[0].IsString()) return ThrowArg(env, "kvmOpen", "path must be a string");
    path = info[0].As<Napi::String>().Utf8Value();
  }
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return Fail(env, "open");
  return Napi::Number::New(env, fd);
}

// An ioctl that takes no argument (or an integer) and returns an int: the result is returned.
struct IntIoctl {
  const char* jsName;
  const char* opName;
  unsigned long request;
  bool hasArg;  // second JS argument is the integer argument
};

const IntIoctl kIntIoctls[] = {
    {"kvmGetApiVersion", "KVM_GET_API_VERSION", KVM_GET_API_VERSION, false},
    {"kvmCheckExtension", "KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION, true},
    {"kvmGetVcpuMmapSize", "KVM_GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE, false},
    {"kvmCreateVm", "KVM_CREATE_VM", KVM_CREATE_VM, false},
    {"kvmSetTssAddr", "KVM_SET_TSS_ADDR", KVM_SET_TSS_ADDR, true},
    {"kvmCreateIrqchip", "KVM_CREATE_IRQCHIP", KVM_CREATE_IRQCHIP, false},
    {"kvmCreateVcpu", "KVM_CREATE_VCPU", KVM_CREATE_VCPU, true},
    {"kvmGetTscKhz", "KVM_GET_TSC_KHZ", KVM_GET_TSC_KHZ, false},
    {"kvmSetTscKhz", "KVM_SET_TSC_KHZ", KVM_SET_TSC_KHZ, true},
};

Napi::Value CallIntIoctl(const Napi::CallbackInfo& info) {
  const IntIoctl* d = static_cast<const IntIoctl*>(info.Data());
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, d->jsName, &fd)) return env.Undefined();
  int64_t arg = 0;
  if (d->hasArg && !ArgInt(info, 1, d->jsName, "argument", 0, UINT32_MAX, &arg)) return env.Undefined();
  int r = Ioctl(fd, d->request, static_cast<unsigned long>(arg));
  if (r < 0) return Fail(env, d->opName);
  return Napi::Number::New(env, r);
}

Napi::Value KvmSetIdentityMapAddr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint64_t addr;
  if (!ArgFd(info, 0, "kvmSetIdentityMapAddr", &fd) ||
      !ReadU64(env, "kvmSetIdentityMapAddr", "addr", info[1], &addr))
    return env.Undefined();
  if (Ioctl(fd, KVM_SET_IDENTITY_MAP_ADDR, &addr) < 0) return Fail(env, "KVM_SET_IDENTITY_MAP_ADDR");
  return env.Undefined();
}

Napi::Value KvmCreatePit2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t flags = 0;
  if (!ArgFd(info, 0, "kvmCreatePit2", &fd)) return env.Undefined();
  if (!info[1].IsUndefined() && !ArgInt(info, 1, "kvmCreatePit2", "flags", 0, UINT32_MAX, &flags)) return env.Undefined();
  struct kvm_pit_config config;
  memset(&config, 0, sizeof config);
  config.flags = static_cast<uint32_t>(flags);
  if (Ioctl(fd, KVM_CREATE_PIT2, &config) < 0) return Fail(env, "KVM_CREATE_PIT2");
  return env.Undefined();
}

// KVM_ENABLE_CAP on a VM or vCPU fd: kvmEnableCap(fd, cap, args?: (number|bigint)[]) (at most 4 args).
Napi::Value KvmEnableCap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmEnableCap";
  int fd;
  int64_t cap;
  if (!ArgFd(info, 0, op, &fd) || !ArgInt(info, 1, op, "cap", 0, UINT32_MAX, &cap)) return env.Undefined();
  struct kvm_enable_cap enable;
  memset(&enable, 0, sizeof enable);
  enable.cap = static_cast<uint32_t>(cap);
  if (!info[2].IsUndefined()) {
    if (!info[2].IsArray()) return ThrowArg(env, op, "args must be an array");
    Napi::Array args = info[2].As<Napi::Array>();
    if (args.Length() > 4) return ThrowArg(env, op, "args holds at most 4 values");
    for (uint32_t i = 0; i < args.Length(); i++) {
      uint64_t v;
      if (!ReadU64(env, op, "args[i]", args.Get(i), &v)) return env.Undefined();
      enable.args[i] = v;
    }
  }
  if (Ioctl(fd, KVM_ENABLE_CAP, &enable) < 0) return Fail(env, "KVM_ENABLE_CAP");
  return env.Undefined();
}

// ---- CPUID and MSR lists ----

Napi::Object CpuidEntryToObject(Napi::Env env, const struct kvm_cpuid_entry2& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("function", Napi::Number::New(env, e.function));
  o.Set("index", Napi::Number::New(env, e.index));
  o.Set("flags", Napi::Number::New(env, e.flags));
  o.Set("eax", Napi::Number::New(env, e.eax));
  o.Set("ebx", Napi::Number::New(env, e.ebx));
  o.Set("ecx", Napi::Number::New(env, e.ecx));
  o.Set("edx", Napi::Number::New(env, e.edx));
  return o;
}

// The kernel reports E2BIG until the array is large enough; grow and retry.
Napi::Value KvmGetSupportedCpuid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, "kvmGetSupportedCpuid", &fd)) return env.Undefined();
  for (uint32_t nent = 128; nent <= 65536; nent *= 2) {
    std::vector<uint8_t> storage(sizeof(struct kvm_cpuid2) + nent * sizeof(struct kvm_cpuid_entry2));
    auto* cpuid = reinterpret_cast<struct kvm_cpuid2*>(storage.data());
    cpuid->nent = nent;
    if (Ioctl(fd, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) {
      if (errno == E2BIG) continue;
      return Fail(env, "KVM_GET_SUPPORTED_CPUID");
    }
    Napi::Array out = Napi::Array::New(env, cpuid->nent);
    for (uint32_t i = 0; i < cpuid->nent; i++) out.Set(i, CpuidEntryToObject(env, cpuid->entries[i]));
    return out;
  }
  return ThrowErrno(env, "KVM_GET_SUPPORTED_CPUID", E2BIG);
}

Napi::Value KvmSetCpuid2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmSetCpuid2";
  int fd;
  if (!ArgFd(info, 0, op, &fd)) return env.Undefined();
  if (!info[1].IsArray()) return ThrowArg(env, op, "entries must be an array of CpuidEntry");
  Napi::Array entries = info[1].As<Napi::Array>();
  uint32_t n = entries.Length();
  if (n > 65536) return ThrowArg(env, op, "too many CPUID entries");
  std::vector<uint8_t> storage(sizeof(struct kvm_cpuid2) + n * sizeof(struct kvm_cpuid_entry2));
  auto* cpuid = reinterpret_cast<struct kvm_cpuid2*>(storage.data());
  cpuid->nent = n;
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = entries.Get(i);
    if (!v.IsObject()) return ThrowArg(env, op, "entries[" + std::to_string(i) + "] must be an object");
    Napi::Object o = v.As<Napi::Object>();
    struct kvm_cpuid_entry2& e = cpuid->entries[i];
    struct {
      const char* key;
      uint32_t* field;
      bool optional;
    } fields[] = {{"function", &e.function, false}, {"index", &e.index, true}, {"flags", &e.flags, true},
                  {"eax", &e.eax, false},           {"ebx", &e.ebx, false},     {"ecx", &e.ecx, false},
                  {"edx", &e.edx, false}};
    for (auto& f : fields) {
      Napi::Value fv = o.Get(f.key);
      if (f.optional && fv.IsUndefined()) continue;
      std::string name = "entries[" + std::to_string(i) + "]." + f.key;
      if (!ReadU32(env, op, name.c_str(), fv, f.field)) return env.Undefined();
    }
  }
  if (Ioctl(fd, KVM_SET_CPUID2, cpuid) < 0) return Fail(env, "KVM_SET_CPUID2");
  return env.Undefined();
}

// KVM_GET_MSR_INDEX_LIST / KVM_GET_MSR_FEATURE_INDEX_LIST: ask for the count (E2BIG), then the list.
Napi::Value GetMsrList(const Napi::CallbackInfo& info, const char* jsName, const char* opName, unsigned long request) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, jsName, &fd)) return env.Undefined();
  struct kvm_msr_list probe;
  probe.nmsrs = 0;
  if (Ioctl(fd, request, &probe) < 0 && errno != E2BIG) return Fail(env, opName);
  for (int attempt = 0; attempt < 4; attempt++) {
    uint32_t n = probe.nmsrs;
    std::vector<uint8_t> storage(sizeof(struct kvm_msr_list) + n * sizeof(uint32_t));
    auto* list = reinterpret_cast<struct kvm_msr_list*>(storage.data());
    list->nmsrs = n;
    if (Ioctl(fd, request, list) < 0) {
      if (errno == E2BIG) {
        probe.nmsrs = list->nmsrs;
        continue;
      }
      return Fail(env, opName);
    }
    Napi::Array out = Napi::Array::New(env, list->nmsrs);
    for (uint32_t i = 0; i < list->nmsrs; i++) out.Set(i, Napi::Number::New(env, list->indices[i]));
    return out;
  }
  return ThrowErrno(env, opName, E2BIG);
}

Napi::Value KvmGetMsrIndexList(const Napi::CallbackInfo& info) {
  return GetMsrList(info, "kvmGetMsrIndexList", "KVM_GET_MSR_INDEX_LIST", KVM_GET_MSR_INDEX_LIST);
}
Napi::Value KvmGetMsrFeatureIndexList(const Napi::CallbackInfo& info) {
  return GetMsrList(info, "kvmGetMsrFeatureIndexList", "KVM_GET_MSR_FEATURE_INDEX_LIST",
                    KVM_GET_MSR_FEATURE_INDEX_LIST);
}

// kvmGetMsrs(vcpuFd, indices) -> bigint[]. KVM stops at the first MSR it refuses: the array is
// then shorter than `indices` and indices[result.length] is the refused one.
Napi::Value KvmGetMsrs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmGetMsrs";
  int fd;
  if (!ArgFd(info, 0, op, &fd)) return env.Undefined();
  if (!info[1].IsArray()) return ThrowArg(env, op, "indices must be an array of numbers");
  Napi::Array indices = info[1].As<Napi::Array>();
  uint32_t n = indices.Length();
  if (n > 4096) return ThrowArg(env, op, "at most 4096 MSRs per call");
  std::vector<uint8_t> storage(sizeof(struct kvm_msrs) + n * sizeof(struct kvm_msr_entry));
  auto* msrs = reinterpret_cast<struct kvm_msrs*>(storage.data());
  msrs->nmsrs = n;
  for (uint32_t i = 0; i < n; i++) {
    if (!ReadU32(env, op, "indices[i]", indices.Get(i), &msrs->entries[i].index)) return env.Undefined();
  }
  int r = Ioctl(fd, KVM_GET_MSRS, msrs);
  if (r < 0) return Fail(env, "KVM_GET_MSRS");
  Napi::Array out = Napi::Array::New(env, r);
  for (int i = 0; i < r; i++) out.Set(i, U64ToBigInt(env, msrs->entries[i].data));
  return out;
}

// kvmSetMsrs(vcpuFd, [[index, value], ...]) -> number of MSRs set (KVM stops at the first refusal).
Napi::Value KvmSetMsrs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmSetMsrs";
  int fd;
  if (!ArgFd(info, 0, op, &fd)) return env.Undefined();
  if (!info[1].IsArray()) return ThrowArg(env, op, "entries must be an array of [index, bigint]");
  Napi::Array entries = info[1].As<Napi::Array>();
  uint32_t n = entries.Length();
  if (n > 4096) return ThrowArg(env, op, "at most 4096 MSRs per call");
  std::vector<uint8_t> storage(sizeof(struct kvm_msrs) + n * sizeof(struct kvm_msr_entry));
  auto* msrs = reinterpret_cast<struct kvm_msrs*>(storage.data());
  msrs->nmsrs = n;
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value pair = entries.Get(i);
    if (!pair.IsArray() || pair.As<Napi::Array>().Length() != 2)
      return ThrowArg(env, op, "entries[" + std::to_string(i) + "] must be [index, value]");
    Napi::Array p = pair.As<Napi::Array>();
    if (!ReadU32(env, op, "index", p.Get(0u), &msrs->entries[i].index)) return env.Undefined();
    uint64_t value;
    if (!ReadU64(env, op, "value", p.Get(1u), &value)) return env.Undefined();
    msrs->entries[i].data = value;
  }
  int r = Ioctl(fd, KVM_SET_MSRS, msrs);
  if (r < 0) return Fail(env, "KVM_SET_MSRS");
  return Napi::Number::New(env, r);
}

// ---- memory slots and dirty logging ----

Napi::Value KvmSetUserMemoryRegion(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmSetUserMemoryRegion";
  int fd;
  Napi::Object o;
  if (!ArgFd(info, 0, op, &fd) || !ArgObject(info, 1, op, "region", &o)) return env.Undefined();
  struct kvm_userspace_memory_region region;
  memset(&region, 0, sizeof region);
  uint64_t guestPhysAddr, memorySize, userspaceAddr;
  uint32_t flags = 0;
  if (!ReadU32(env, op, "slot", o.Get("slot"), &region.slot)) return env.Undefined();
  if (!o.Get("flags").IsUndefined() && !ReadU32(env, op, "flags", o.Get("flags"), &flags)) return env.Undefined();
  if (!ReadU64(env, op, "guestPhysAddr", o.Get("guestPhysAddr"), &guestPhysAddr) ||
      !ReadU64(env, op, "memorySize", o.Get("memorySize"), &memorySize))
    return env.Undefined();
  if (memorySize == 0 && o.Get("userspaceAddr").IsUndefined()) {
    userspaceAddr = 0;  // deleting a slot needs no address
  } else if (!ReadU64(env, op, "userspaceAddr", o.Get("userspaceAddr"), &userspaceAddr)) {
    return env.Undefined();
  }
  region.flags = flags;
  region.guest_phys_addr = guestPhysAddr;
  region.memory_size = memorySize;
  region.userspace_addr = userspaceAddr;
  if (Ioctl(fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) return Fail(env, "KVM_SET_USER_MEMORY_REGION");
  return env.Undefined();
}

// kvmGetDirtyLog(vmFd, slot, bitmap). The kernel writes as many bytes as the slot needs
// (ceil(pages / 64) * 8) without knowing the Buffer's size, so it writes into a scratch
// mapping that ends at a PROT_NONE guard page: a too-small bitmap fails with EFAULT instead
// of corrupting the heap. The scratch copy is then copied into the caller's Buffer.
Napi::Value KvmGetDirtyLog(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmGetDirtyLog";
  int fd;
  int64_t slot;
  uint8_t* bitmap;
  size_t length;
  if (!ArgFd(info, 0, op, &fd) || !ArgInt(info, 1, op, "slot", 0, UINT32_MAX, &slot) ||
      !ArgBuffer(info, 2, op, "bitmap", 0, &bitmap, &length))
    return env.Undefined();
  if (length == 0 || length % 8 != 0) return ThrowArg(env, op, "bitmap length must be a non-zero multiple of 8 bytes");
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t dataBytes = (length + page - 1) / page * page;
  void* scratch = mmap(nullptr, dataBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (scratch == MAP_FAILED) return Fail(env, "mmap");
  uint8_t* base = static_cast<uint8_t*>(scratch);
  if (mprotect(base + dataBytes, page, PROT_NONE) < 0) {
    int err = errno;
    munmap(scratch, dataBytes + page);
    return ThrowErrno(env, "mprotect", err);
  }
  uint8_t* target = base + dataBytes - length;  // ends exactly at the guard page
  struct kvm_dirty_log log;
  memset(&log, 0, sizeof log);
  log.slot = static_cast<uint32_t>(slot);
  log.dirty_bitmap = target;
  int r = Ioctl(fd, KVM_GET_DIRTY_LOG, &log);
  int err = errno;
  if (r == 0) memcpy(bitmap, target, length);
  munmap(scratch, dataBytes + page);
  if (r < 0) return ThrowErrno(env, "KVM_GET_DIRTY_LOG", err);
  return env.Undefined();
}

// kvmClearDirtyLog(vmFd, slot, firstPage, numPages, bitmap): re-protects the pages whose bits
// are set (needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled with kvmEnableCap). firstPage must
// be a multiple of 64; bit i of the bitmap is page firstPage + i.
Napi::Value KvmClearDirtyLog(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmClearDirtyLog";
  int fd;
  int64_t slot, numPages;
  uint64_t firstPage;
  uint8_t* bitmap;
  size_t length;
  if (!ArgFd(info, 0, op, &fd) || !ArgInt(info, 1, op, "slot", 0, UINT32_MAX, &slot) ||
      !ReadU64(env, op, "firstPage", info[2], &firstPage) ||
      !ArgInt(info, 3, op, "numPages", 0, UINT32_MAX, &numPages) ||
      !ArgBuffer(info, 4, op, "bitmap", 0, &bitmap, &length))
    return env.Undefined();
  // The kernel reads the bitmap in whole 64-bit words.
  uint64_t needed = (static_cast<uint64_t>(numPages) + 63) / 64 * 8;
  if (length < needed)
    return ThrowArg(env, op, "bitmap must hold at least " + std::to_string(needed) + " bytes for numPages");
  struct kvm_clear_dirty_log clear;
  memset(&clear, 0, sizeof clear);
  clear.slot = static_cast<uint32_t>(slot);
  clear.num_pages = static_cast<uint32_t>(numPages);
  clear.first_page = firstPage;
  clear.dirty_bitmap = bitmap;
  if (Ioctl(fd, KVM_CLEAR_DIRTY_LOG, &clear) < 0) return Fail(env, "KVM_CLEAR_DIRTY_LOG");
  return env.Undefined();
}

// ---- interrupts and eventfds ----

Napi::Value KvmIrqLine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmIrqLine";
  int fd;
  int64_t irq, level;
  if (!ArgFd(info, 0, op, &fd) || !ArgInt(info, 1, op, "irq", 0, UINT32_MAX, &irq) ||
      !ArgInt(info, 2, op, "level", 0, 1, &level))
    return env.Undefined();
  struct kvm_irq_level irqLevel;
  memset(&irqLevel, 0, sizeof irqLevel);
  irqLevel.irq = static_cast<uint32_t>(irq);
  irqLevel.level = static_cast<uint32_t>(level);
  if (Ioctl(fd, KVM_IRQ_LINE, &irqLevel) < 0) return Fail(env, "KVM_IRQ_LINE");
  return env.Undefined();
}

Napi::Value KvmSetGsiRouting(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmSetGsiRouting";
  int fd;
  if (!ArgFd(info, 0, op, &fd)) return env.Undefined();
  if (!info[1].IsArray()) return ThrowArg(env, op, "entries must be an array");
  Napi::Array entries = info[1].As<Napi::Array>();
  uint32_t n = entries.Length();
  if (n > 4096) return ThrowArg(env, op, "at most 4096 routes (KVM_MAX_IRQ_ROUTES)");
  std::vector<uint8_t> storage(sizeof(struct kvm_irq_routing) + n * sizeof(struct kvm_irq_routing_entry));
  auto* routing = reinterpret_cast<struct kvm_irq_routing*>(storage.data());
  routing->nr = n;
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = entries.Get(i);
    std::string at = "entries[" + std::to_string(i) + "]";
    if (!v.IsObject()) return ThrowArg(env, op, at + " must be an object");
    Napi::Object o = v.As<Napi::Object>();
    struct kvm_irq_routing_entry& e = routing->entries[i];
    if (!ReadU32(env, op, (at + ".gsi").c_str(), o.Get("gsi"), &e.gsi)) return env.Undefined();
    Napi::Value type = o.Get("type");
    std::string typeName = type.IsString() ? type.As<Napi::String>().Utf8Value() : "";
    if (typeName == "irqchip") {
      e.type = KVM_IRQ_ROUTING_IRQCHIP;
      if (!ReadU32(env, op, (at + ".irqchip").c_str(), o.Get("irqchip"), &e.u.irqchip.irqchip) ||
          !ReadU32(env, op, (at + ".pin").c_str(), o.Get("pin"), &e.u.irqchip.pin))
        return env.Undefined();
    } else if (typeName == "msi") {
      e.type = KVM_IRQ_ROUTING_MSI;
      if (!ReadU32(env, op, (at + ".addressLo").c_str(), o.Get("addressLo"), &e.u.msi.address_lo) ||
          !ReadU32(env, op, (at + ".addressHi").c_str(), o.Get("addressHi"), &e.u.msi.address_hi) ||
          !ReadU32(env, op, (at + ".data").c_str(), o.Get("data"), &e.u.msi.data))
        return env.Undefined();
    } else {
      return ThrowArg(env, op, at + ".type must be 'irqchip' or 'msi'");
    }
  }
  if (Ioctl(fd, KVM_SET_GSI_ROUTING, routing) < 0) return Fail(env, "KVM_SET_GSI_ROUTING");
  return env.Undefined();
}

Napi::Value KvmIoeventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmIoeventfd";
  int fd;
  Napi::Object o;
  if (!ArgFd(info, 0, op, &fd) || !ArgObject(info, 1, op, "options", &o)) return env.Undefined();
  struct kvm_ioeventfd ioeventfd;
  memset(&ioeventfd, 0, sizeof ioeventfd);
  uint64_t addr;
  int64_t len, eventFd;
  bool pio, deassign;
  if (!ReadU64(env, op, "addr", o.Get("addr"), &addr) ||
      !ReadInt(env, op, "len", o.Get("len"), 0, 8, &len) ||
      !ReadInt(env, op, "fd", o.Get("fd"), 0, INT32_MAX, &eventFd) ||
      !ReadOptBool(env, op, o, "pio", false, &pio) || !ReadOptBool(env, op, o, "deassign", false, &deassign))
    return env.Undefined();
  ioeventfd.addr = addr;
  ioeventfd.len = static_cast<uint32_t>(len);
  ioeventfd.fd = static_cast<int32_t>(eventFd);
  if (pio) ioeventfd.flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (deassign) ioeventfd.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
  Napi::Value datamatch = o.Get("datamatch");
  if (!datamatch.IsUndefined()) {
    uint64_t value;
    if (!ReadU64(env, op, "datamatch", datamatch, &value)) return env.Undefined();
    ioeventfd.datamatch = value;
    ioeventfd.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
  }
  if (Ioctl(fd, KVM_IOEVENTFD, &ioeventfd) < 0) return Fail(env, "KVM_IOEVENTFD");
  return env.Undefined();
}

Napi::Value KvmIrqfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmIrqfd";
  int fd;
  Napi::Object o;
  if (!ArgFd(info, 0, op, &fd) || !ArgObject(info, 1, op, "options", &o)) return env.Undefined();
  struct kvm_irqfd irqfd;
  memset(&irqfd, 0, sizeof irqfd);
  int64_t eventFd;
  bool deassign;
  if (!ReadU32(env, op, "gsi", o.Get("gsi"), &irqfd.gsi) ||
      !ReadInt(env, op, "fd", o.Get("fd"), 0, INT32_MAX, &eventFd) ||
      !ReadOptBool(env, op, o, "deassign", false, &deassign))
    return env.Undefined();
  irqfd.fd = static_cast<uint32_t>(eventFd);
  if (deassign) irqfd.flags |= KVM_IRQFD_FLAG_DEASSIGN;
  Napi::Value resample = o.Get("resampleFd");
  if (!resample.IsUndefined()) {
    int64_t resampleFd;
    if (!ReadInt(env, op, "resampleFd", resample, 0, INT32_MAX, &resampleFd)) return env.Undefined();
    irqfd.resamplefd = static_cast<uint32_t>(resampleFd);
    irqfd.flags |= KVM_IRQFD_FLAG_RESAMPLE;
  }
  if (Ioctl(fd, KVM_IRQFD, &irqfd) < 0) return Fail(env, "KVM_IRQFD");
  return env.Undefined();
}

Napi::Value KvmTranslate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "kvmTranslate";
  int fd;
  uint64_t linear;
  if (!ArgFd(info, 0, op, &fd) || !ReadU64(env, op, "linearAddr", info[1], &linear)) return env.Undefined();
  struct kvm_translation tr;
  memset(&tr, 0, sizeof tr);
  tr.linear_address = linear;
  if (Ioctl(fd, KVM_TRANSLATE, &tr) < 0) return Fail(env, "KVM_TRANSLATE");
  Napi::Object out = Napi::Object::New(env);
  out.Set("physicalAddress", U64ToBigInt(env, tr.physical_address));
  out.Set("valid", Napi::Boolean::New(env, tr.valid != 0));
  out.Set("writeable", Napi::Boolean::New(env, tr.writeable != 0));
  out.Set("usermode", Napi::Boolean::New(env, tr.usermode != 0));
  return out;
}

// ---- raw-struct state: get(fd) -> Buffer, set(fd, Buffer) ----

struct RawStateIoctl {
  const char* getJs;
  const char* setJs;
  const char* getOp;
  const char* setOp;
  unsigned long getRequest;
  unsigned long setRequest;
  size_t size;
};

const RawStateIoctl kRawState[] = {
    {"kvmGetRegs", "kvmSetRegs", "KVM_GET_REGS", "KVM_SET_REGS", KVM_GET_REGS, KVM_SET_REGS, sizeof(struct kvm_regs)},
    {"kvmGetSregs", "kvmSetSregs", "KVM_GET_SREGS", "KVM_SET_SREGS", KVM_GET_SREGS, KVM_SET_SREGS,
     sizeof(struct kvm_sregs)},
    {"kvmGetFpu", "kvmSetFpu", "KVM_GET_FPU", "KVM_SET_FPU", KVM_GET_FPU, KVM_SET_FPU, sizeof(struct kvm_fpu)},
    {"kvmGetXsave", "kvmSetXsave", "KVM_GET_XSAVE", "KVM_SET_XSAVE", KVM_GET_XSAVE, KVM_SET_XSAVE,
     sizeof(struct kvm_xsave)},
    {"kvmGetXcrs", "kvmSetXcrs", "KVM_GET_XCRS", "KVM_SET_XCRS", KVM_GET_XCRS, KVM_SET_XCRS, sizeof(struct kvm_xcrs)},
    {"kvmGetLapic", "kvmSetLapic", "KVM_GET_LAPIC", "KVM_SET_LAPIC", KVM_GET_LAPIC, KVM_SET_LAPIC,
     sizeof(struct kvm_lapic_state)},
    {"kvmGetVcpuEvents", "kvmSetVcpuEvents", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS,
     KVM_SET_VCPU_EVENTS, sizeof(struct kvm_vcpu_events)},
    {"kvmGetMpState", "kvmSetMpState", "KVM_GET_MP_STATE", "KVM_SET_MP_STATE", KVM_GET_MP_STATE, KVM_SET_MP_STATE,
     sizeof(struct kvm_mp_state)},
    {"kvmGetDebugRegs", "kvmSetDebugRegs", "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", KVM_GET_DEBUGREGS,
     KVM_SET_DEBUGREGS, sizeof(struct kvm_debugregs)},
    {"kvmGetPit2", "kvmSetPit2", "KVM_GET_PIT2", "KVM_SET_PIT2", KVM_GET_PIT2, KVM_SET_PIT2,
     sizeof(struct kvm_pit_state2)},
    {"kvmGetClock", "kvmSetClock", "KVM_GET_CLOCK", "KVM_SET_CLOCK", KVM_GET_CLOCK, KVM_SET_CLOCK,
     sizeof(struct kvm_clock_data)},
};

Napi::Value RawGet(const Napi::CallbackInfo& info) {
  const RawStateIoctl* d = static_cast<const RawStateIoctl*>(info.Data());
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, d->getJs, &fd)) return env.Undefined();
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, d->size);
  memset(out.Data(), 0, d->size);
  if (Ioctl(fd, d->getRequest, out.Data()) < 0) return Fail(env, d->getOp);
  return out;
}

Napi::Value RawSet(const Napi::CallbackInfo& info) {
  const RawStateIoctl* d = static_cast<const RawStateIoctl*>(info.Data());
  Napi::Env env = info.Env();
  int fd;
  uint8_t* data;
  size_t length;
  if (!ArgFd(info, 0, d->setJs, &fd) || !ArgBuffer(info, 1, d->setJs, "state", d->size, &data, &length))
    return env.Undefined();
  // Copy: the kernel must not see a Buffer that JS could resize or detach meanwhile.
  std::vector<uint8_t> copy(data, data + length);
  if (Ioctl(fd, d->setRequest, copy.data()) < 0) return Fail(env, d->setOp);
  return env.Undefined();
}

// The irqchip struct carries its chip id (PIC master 0, PIC slave 1, IOAPIC 2) in its first field.
Napi::Value KvmGetIrqchip(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t chipId;
  if (!ArgFd(info, 0, "kvmGetIrqchip", &fd) || !ArgInt(info, 1, "kvmGetIrqchip", "chipId", 0, 2, &chipId))
    return env.Undefined();
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, sizeof(struct kvm_irqchip));
  memset(out.Data(), 0, out.Length());
  reinterpret_cast<struct kvm_irqchip*>(out.Data())->chip_id = static_cast<uint32_t>(chipId);
  if (Ioctl(fd, KVM_GET_IRQCHIP, out.Data()) < 0) return Fail(env, "KVM_GET_IRQCHIP");
  return out;
}

Napi::Value KvmSetIrqchip(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t* data;
  size_t length;
  if (!ArgFd(info, 0, "kvmSetIrqchip", &fd) ||
      !ArgBuffer(info, 1, "kvmSetIrqchip", "state", sizeof(struct kvm_irqchip), &data, &length))
    return env.Undefined();
  std::vector<uint8_t> copy(data, data + length);
  if (Ioctl(fd, KVM_SET_IRQCHIP, copy.data()) < 0) return Fail(env, "KVM_SET_IRQCHIP");
  return env.Undefined();
}

Napi::Object StructSizes(Napi::Env env) {
  Napi::Object s = Napi::Object::New(env);
  s.Set("regs", sizeof(struct kvm_regs));
  s.Set("sregs", sizeof(struct kvm_sregs));
  s.Set("fpu", sizeof(struct kvm_fpu));
  s.Set("xsave", sizeof(struct kvm_xsave));
  s.Set("xcrs", sizeof(struct kvm_xcrs));
  s.Set("lapic", sizeof(struct kvm_lapic_state));
  s.Set("vcpuEvents", sizeof(struct kvm_vcpu_events));
  s.Set("mpState", sizeof(struct kvm_mp_state));
  s.Set("debugRegs", sizeof(struct kvm_debugregs));
  s.Set("irqchip", sizeof(struct kvm_irqchip));
  s.Set("pit2", sizeof(struct kvm_pit_state2));
  s.Set("clock", sizeof(struct kvm_clock_data));
  s.Set("run", sizeof(struct kvm_run));
  return s;
}

void AddConstants(Napi::Env env, Napi::Object exports) {
  // Shared with other sources (tap.cc adds TUN_F_*, IFF_*): extend the object if it exists.
  Napi::Value existing = exports.Get("constants");
  Napi::Object c = existing.IsObject() ? existing.As<Napi::Object>() : Napi::Object::New(env);
#define C(name) c.Set(#name, Napi::Number::New(env, static_cast<double>(name)));
#include "kvm_constants.h"
  C(KVM_API_VERSION)
  C(KVM_MEM_LOG_DIRTY_PAGES) C(KVM_MEM_READONLY)
  C(KVM_PIT_SPEAKER_DUMMY)
  C(KVM_IRQCHIP_PIC_MASTER) C(KVM_IRQCHIP_PIC_SLAVE) C(KVM_IRQCHIP_IOAPIC)
  C(KVM_INTERNAL_ERROR_EMULATION) C(KVM_INTERNAL_ERROR_SIMUL_EX) C(KVM_INTERNAL_ERROR_DELIVERY_EV)
  C(KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON)
  C(KVM_SYSTEM_EVENT_SHUTDOWN) C(KVM_SYSTEM_EVENT_RESET) C(KVM_SYSTEM_EVENT_CRASH)
  C(KVM_MP_STATE_RUNNABLE) C(KVM_MP_STATE_UNINITIALIZED) C(KVM_MP_STATE_INIT_RECEIVED) C(KVM_MP_STATE_HALTED)
  C(KVM_MP_STATE_SIPI_RECEIVED)
  C(KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
  C(KVM_CLOCK_TSC_STABLE)
  C(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) C(KVM_DIRTY_LOG_INITIALLY_SET)
  C(KVM_PIT_FLAGS_HPET_LEGACY)
  C(KVM_IRQ_ROUTING_IRQCHIP) C(KVM_IRQ_ROUTING_MSI)
#undef C
  exports.Set("constants", c);
}

}  // namespace

void InitKvm(Napi::Env env, Napi::Object exports) {
  auto fn = [&](const char* name, Napi::Function::Callback cb, void* data = nullptr) {
    exports.Set(name, Napi::Function::New(env, cb, name, data));
  };
  fn("kvmOpen", KvmOpen);
  for (const IntIoctl& d : kIntIoctls) fn(d.jsName, CallIntIoctl, const_cast<IntIoctl*>(&d));
  fn("kvmSetIdentityMapAddr", KvmSetIdentityMapAddr);
  fn("kvmCreatePit2", KvmCreatePit2);
  fn("kvmEnableCap", KvmEnableCap);
  fn("kvmGetSupportedCpuid", KvmGetSupportedCpuid);
  fn("kvmSetCpuid2", KvmSetCpuid2);
  fn("kvmGetMsrIndexList", KvmGetMsrIndexList);
  fn("kvmGetMsrFeatureIndexList", KvmGetMsrFeatureIndexList);
  fn("kvmGetMsrs", KvmGetMsrs);
  fn("kvmSetMsrs", KvmSetMsrs);
  fn("kvmSetUserMemoryRegion", KvmSetUserMemoryRegion);
  fn("kvmGetDirtyLog", KvmGetDirtyLog);
  fn("kvmClearDirtyLog", KvmClearDirtyLog);
  fn("kvmIrqLine", KvmIrqLine);
  fn("kvmSetGsiRouting", KvmSetGsiRouting);
  fn("kvmIoeventfd", KvmIoeventfd);
  fn("kvmIrqfd", KvmIrqfd);
  fn("kvmTranslate", KvmTranslate);
  for (const RawStateIoctl& d : kRawState) {
    fn(d.getJs, RawGet, const_cast<RawStateIoctl*>(&d));
    fn(d.setJs, RawSet, const_cast<RawStateIoctl*>(&d));
  }
  fn("kvmGetIrqchip", KvmGetIrqchip);
  fn("kvmSetIrqchip", KvmSetIrqchip);
  exports.Set("structSizes", StructSizes(env));
  AddConstants(env, exports);
}

}  // namespace baton
