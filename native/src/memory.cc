#include <napi.h>

namespace baton {
void InitMemory(Napi::Env, Napi::Object) {}
}  // namespace baton
