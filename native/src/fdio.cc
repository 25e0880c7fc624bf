#include <napi.h>

namespace baton {
void InitFdio(Napi::Env, Napi::Object) {}
}  // namespace baton
