// Guest RAM backing: memfd / file, ftruncate, and MAP_SHARED mappings seen by JS as external
// ArrayBuffers (contract: src/native/API.md, "Memory").
//
// A mapping is unmapped exactly once: by `munmap(address, size)` (which first detaches the
// ArrayBuffer so JS can no longer touch the pages) or, failing that, when the ArrayBuffer is
// garbage collected. The registry below lets munmap find the ArrayBuffer and refuse addresses
// this module did not map (unmapping an arbitrary range would crash the process).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <napi.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "errors.h"
#include "kvm_args.h"

namespace baton {

namespace {

struct Mapping {
  void* address;
  size_t size;
  napi_ref buffer;  // weak: lets munmap detach a still-reachable ArrayBuffer
  bool mapped;
};

std::mutex gMappingsMutex;                    // worker threads have their own envs
std::map<uintptr_t, Mapping*> gMappings;      // live mappings by address

// Node 20 builds an external ArrayBuffer as a Buffer, limited to buffer.constants.MAX_LENGTH
// (2^32 bytes): larger RAM is exposed as several windows (mmapShared's offset).
constexpr uint64_t kMaxWindowBytes = uint64_t{1} << 32;

void FinalizeMapping(napi_env env, void* /*data*/, void* hint) {
  Mapping* m = static_cast<Mapping*>(hint);
  {
    std::lock_guard<std::mutex> lock(gMappingsMutex);
    if (m->mapped) {
      munmap(m->address, m->size);
      m->mapped = false;
      gMappings.erase(reinterpret_cast<uintptr_t>(m->address));
    }
  }
  napi_delete_reference(env, m->buffer);
  delete m;
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "memfdCreate";
  if (!info[0].IsString()) return ThrowArg(env, op, "name must be a string");
  std::string name = info[0].As<Napi::String>().Utf8Value();
  unsigned int flags = MFD_CLOEXEC;
  if (!info[1].IsUndefined()) {
    Napi::Object o;
    if (!ArgObject(info, 1, op, "options", &o)) return env.Undefined();
    bool allowSealing, hugetlb;
    if (!ReadOptBool(env, op, o, "allowSealing", false, &allowSealing) ||
        !ReadOptBool(env, op, o, "hugetlb", false, &hugetlb))
      return env.Undefined();
    if (allowSealing) flags |= MFD_ALLOW_SEALING;
    if (hugetlb) flags |= MFD_HUGETLB;
  }
  int fd = memfd_create(name.c_str(), flags);
  if (fd < 0) return ThrowErrno(env, "memfd_create", errno);
  return Napi::Number::New(env, fd);
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint64_t size;
  if (!ArgFd(info, 0, "ftruncate", &fd) || !ReadU64(env, "ftruncate", "size", info[1], &size)) return env.Undefined();
  if (size > static_cast<uint64_t>(INT64_MAX)) return ThrowArg(env, "ftruncate", "size too large");
  if (ftruncate(fd, static_cast<off_t>(size)) < 0) return ThrowErrno(env, "ftruncate", errno);
  return env.Undefined();
}

Napi::Value FstatSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, "fstatSize", &fd)) return env.Undefined();
  struct stat st;
  if (fstat(fd, &st) < 0) return ThrowErrno(env, "fstat", errno);
  return Napi::Number::New(env, static_cast<double>(st.st_size));
}

Napi::Value OpenFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "openFile";
  if (!info[0].IsString()) return ThrowArg(env, op, "path must be a string");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int64_t flags, mode = 0600;
  if (!ArgInt(info, 1, op, "flags", 0, INT32_MAX, &flags)) return env.Undefined();
  if (!info[2].IsUndefined() && !ArgInt(info, 2, op, "mode", 0, 07777, &mode)) return env.Undefined();
  int fd = open(path.c_str(), static_cast<int>(flags) | O_CLOEXEC, static_cast<mode_t>(mode));
  if (fd < 0) return ThrowErrno(env, "open", errno);
  return Napi::Number::New(env, fd);
}

// Wraps a fresh mapping as an external ArrayBuffer and registers it: {buffer, address}.
Napi::Value WrapMapping(Napi::Env env, const char* op, void* address, uint64_t size) {
  Mapping* m = new Mapping{address, static_cast<size_t>(size), nullptr, true};
  napi_value buffer;
  napi_status status = napi_create_external_arraybuffer(env, address, m->size, FinalizeMapping, m, &buffer);
  if (status != napi_ok) {
    // Node may already have run FinalizeMapping (it does when it rejects the length), so the
    // mapping and record are left alone here: a leak on a path the size check makes
    // unreachable, rather than a double unmap. A pending JS exception carries the reason.
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) return ThrowArg(env, op, "could not wrap " + std::to_string(size) + " bytes as an external ArrayBuffer");
    return env.Undefined();
  }
  napi_create_reference(env, buffer, 0, &m->buffer);
  {
    std::lock_guard<std::mutex> lock(gMappingsMutex);
    gMappings[reinterpret_cast<uintptr_t>(address)] = m;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("buffer", Napi::Value(env, buffer));
  out.Set("address", U64ToBigInt(env, reinterpret_cast<uintptr_t>(address)));
  return out;
}

bool CheckWindow(Napi::Env env, const char* op, uint64_t size, uint64_t offset) {
  if (size == 0 || size > kMaxWindowBytes) {
    ThrowArg(env, op, "size must be in [1, 2^32] bytes (Node's ArrayBuffer limit); map larger RAM as several windows");
    return false;
  }
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (offset % page != 0) {
    ThrowArg(env, op, "offset must be a multiple of the page size");
    return false;
  }
  return true;
}

// mmapShared(fd, size, offset = 0) -> {buffer, address}
Napi::Value MmapShared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "mmapShared";
  int fd;
  uint64_t size, offset = 0;
  if (!ArgFd(info, 0, op, &fd) || !ReadU64(env, op, "size", info[1], &size)) return env.Undefined();
  if (!info[2].IsUndefined() && !ReadU64(env, op, "offset", info[2], &offset)) return env.Undefined();
  if (!CheckWindow(env, op, size, offset)) return env.Undefined();
  void* address = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (address == MAP_FAILED) return ThrowErrno(env, "mmap", errno);
  return WrapMapping(env, op, address, size);
}

// mmapReserve(size) -> {buffer, address}: address space for RAM that arrives later
// (mmapSharedAt), inaccessible until then. Its ArrayBuffer exists from now on, so the
// garbage collection V8 starts on seeing GiBs of external memory happens now, not then.
Napi::Value MmapReserve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "mmapReserve";
  uint64_t size;
  if (!ReadU64(env, op, "size", info[0], &size) || !CheckWindow(env, op, size, 0)) return env.Undefined();
  void* address = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (address == MAP_FAILED) return ThrowErrno(env, "mmap", errno);
  return WrapMapping(env, op, address, size);
}

// mmapSharedAt(address, fd, size, offset = 0): maps fd over a whole live mapping made by
// mmapReserve (MAP_FIXED: the reservation is replaced in one step; its ArrayBuffer now sees
// the fd's pages).
Napi::Value MmapSharedAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "mmapSharedAt";
  int fd;
  uint64_t address, size, offset = 0;
  if (!ReadU64(env, op, "address", info[0], &address) || !ArgFd(info, 1, op, &fd) ||
      !ReadU64(env, op, "size", info[2], &size))
    return env.Undefined();
  if (!info[3].IsUndefined() && !ReadU64(env, op, "offset", info[3], &offset)) return env.Undefined();
  if (!CheckWindow(env, op, size, offset)) return env.Undefined();
  std::lock_guard<std::mutex> lock(gMappingsMutex);
  auto it = gMappings.find(static_cast<uintptr_t>(address));
  if (it == gMappings.end() || !it->second->mapped || it->second->size != size)
    return ThrowArg(env, op, "address and size must be a whole live mapping made by mmapReserve");
  void* at = mmap(it->second->address, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, static_cast<off_t>(offset));
  if (at == MAP_FAILED) return ThrowErrno(env, "mmap", errno);
  return env.Undefined();
}

// munmap(address, size): only a whole mapping made by mmapShared or mmapReserve; its ArrayBuffer is detached
// first (byteLength becomes 0), so stale JS views cannot fault.
Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "munmap";
  uint64_t address, size;
  if (!ReadU64(env, op, "address", info[0], &address) || !ReadU64(env, op, "size", info[1], &size))
    return env.Undefined();
  Mapping* m;
  {
    std::lock_guard<std::mutex> lock(gMappingsMutex);
    auto it = gMappings.find(static_cast<uintptr_t>(address));
    if (it == gMappings.end()) return ThrowArg(env, op, "address is not a live mapping made by mmapShared or mmapReserve");
    m = it->second;
    if (m->size != size) return ThrowArg(env, op, "size must be the whole mapping (" + std::to_string(m->size) + ")");
  }
  napi_value buffer = nullptr;
  napi_get_reference_value(env, m->buffer, &buffer);
  if (buffer != nullptr) {
    napi_status status = napi_detach_arraybuffer(env, buffer);
    if (status != napi_ok) return ThrowArg(env, op, "the mapping's ArrayBuffer could not be detached; not unmapped");
  }
  {
    std::lock_guard<std::mutex> lock(gMappingsMutex);
    if (m->mapped) {
      if (::munmap(m->address, m->size) < 0) return ThrowErrno(env, "munmap", errno);
      m->mapped = false;
      gMappings.erase(reinterpret_cast<uintptr_t>(m->address));
    }
  }
  // The Mapping record itself is freed by FinalizeMapping, which Node still runs.
  return env.Undefined();
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("fstatSize", Napi::Function::New(env, FstatSize, "fstatSize"));
  exports.Set("openFile", Napi::Function::New(env, OpenFile, "openFile"));
  exports.Set("mmapShared", Napi::Function::New(env, MmapShared, "mmapShared"));
  exports.Set("mmapReserve", Napi::Function::New(env, MmapReserve, "mmapReserve"));
  exports.Set("mmapSharedAt", Napi::Function::New(env, MmapSharedAt, "mmapSharedAt"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
}

}  // namespace baton
