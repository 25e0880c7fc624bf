#include <napi.h>

namespace baton {
void InitVhost(Napi::Env, Napi::Object) {}
}  // namespace baton
