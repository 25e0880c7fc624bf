// Errors thrown to JavaScript by every wrapper: one shape everywhere.
// A failure becomes an Error whose message names the operation and the errno
// ("KVM_CREATE_VM failed: ENOENT (No such file or directory)") and which carries
// `code` (the errno name), `errno` (the number) and `syscall` (the operation name),
// like Node's own system errors.
#pragma once
#include <napi.h>
#include <string>

namespace baton {

// Throws (as a pending JS exception) the errno-style error described above.
// Returns an undefined Value so callers can `return ThrowErrno(...)`.
Napi::Value ThrowErrno(Napi::Env env, const char* operation, int err);

// Throws a TypeError/RangeError-like argument error naming the operation and argument.
Napi::Value ThrowArg(Napi::Env env, const char* operation, const std::string& what);

// Name of an errno ("EINVAL"); "E<number>" when unknown.
const char* ErrnoName(int err);

}  // namespace baton
