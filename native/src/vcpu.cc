#include <napi.h>

namespace baton {
void InitVcpu(Napi::Env, Napi::Object) {}
}  // namespace baton
