// Module entry: each source file registers its own functions.
#include <napi.h>

namespace baton {
void InitKvm(Napi::Env env, Napi::Object exports);
void InitVcpu(Napi::Env env, Napi::Object exports);
void InitMemory(Napi::Env env, Napi::Object exports);
void InitFdio(Napi::Env env, Napi::Object exports);
void InitTap(Napi::Env env, Napi::Object exports);
void InitUnixSocket(Napi::Env env, Napi::Object exports);
void InitVhost(Napi::Env env, Napi::Object exports);
void InitSched(Napi::Env env, Napi::Object exports);
}  // namespace baton

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  baton::InitKvm(env, exports);
  baton::InitVcpu(env, exports);
  baton::InitMemory(env, exports);
  baton::InitFdio(env, exports);
  baton::InitTap(env, exports);
  baton::InitUnixSocket(env, exports);
  baton::InitVhost(env, exports);
  baton::InitSched(env, exports);
  return exports;
}

NODE_API_MODULE(baton_native, Init)
