#include <napi.h>

namespace baton {
void InitKvm(Napi::Env, Napi::Object) {}
}  // namespace baton
