#include <napi.h>

namespace baton {
void InitTap(Napi::Env, Napi::Object) {}
}  // namespace baton
