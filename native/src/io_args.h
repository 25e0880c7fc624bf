// Argument checks shared by the I/O wrappers (fdio, tap, unix_socket, vhost).
// Each getter validates one JS argument and, when it is wrong, leaves a pending
// TypeError naming the operation (via ThrowArg) and returns false: the caller then
// returns at once. Nothing here aborts on bad input.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "errors.h"

namespace baton {
namespace io {

// A JS number that is an integer within [min, max].
inline bool GetInt(const Napi::CallbackInfo& info, size_t index, const char* op, const char* name,
                   int64_t min, int64_t max, int64_t* out) {
  Napi::Value v = info[index];
  if (!v.IsNumber()) {
    ThrowArg(info.Env(), op, std::string(name) + " must be a number");
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || d < static_cast<double>(min) ||
      d > static_cast<double>(max)) {
    ThrowArg(info.Env(), op,
             std::string(name) + " must be an integer in [" + std::to_string(min) + ", " +
                 std::to_string(max) + "]");
    return false;
  }
  *out = static_cast<int64_t>(d);
  return true;
}

// A file descriptor: an integer in [0, INT32_MAX].
inline bool GetFd(const Napi::CallbackInfo& info, size_t index, const char* op, int* fd,
                  const char* name = "fd") {
  int64_t v;
  if (!GetInt(info, index, op, name, 0, INT32_MAX, &v)) return false;
  *fd = static_cast<int>(v);
  return true;
}

// A 64-bit unsigned value given as a bigint or as a non-negative safe integer number.
inline bool GetU64(Napi::Env env, Napi::Value v, const char* op, const char* name, uint64_t* out) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) {
      ThrowArg(env, op, std::string(name) + " must fit in an unsigned 64-bit integer");
      return false;
    }
    *out = u;
    return true;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (std::isfinite(d) && std::floor(d) == d && d >= 0 && d <= 9007199254740991.0) {
      *out = static_cast<uint64_t>(d);
      return true;
    }
  }
  ThrowArg(env, op, std::string(name) + " must be a bigint or a non-negative safe integer");
  return false;
}

// An optional boolean (undefined means `fallback`).
inline bool GetOptBool(Napi::Env env, Napi::Value v, const char* op, const char* name, bool fallback,
                       bool* out) {
  if (v.IsUndefined()) {
    *out = fallback;
    return true;
  }
  if (!v.IsBoolean()) {
    ThrowArg(env, op, std::string(name) + " must be a boolean");
    return false;
  }
  *out = v.As<Napi::Boolean>().Value();
  return true;
}

// Optional options object: undefined gives an empty object; anything but an object is an error.
inline bool GetOptions(const Napi::CallbackInfo& info, size_t index, const char* op, Napi::Object* out) {
  Napi::Value v = info[index];
  if (v.IsUndefined()) {
    *out = Napi::Object::New(info.Env());
    return true;
  }
  if (!v.IsObject()) {
    ThrowArg(info.Env(), op, "options must be an object");
    return false;
  }
  *out = v.As<Napi::Object>();
  return true;
}

inline bool GetString(const Napi::CallbackInfo& info, size_t index, const char* op, const char* name,
                      std::string* out) {
  Napi::Value v = info[index];
  if (!v.IsString()) {
    ThrowArg(info.Env(), op, std::string(name) + " must be a string");
    return false;
  }
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

// Raw bytes of a Buffer, any TypedArray, a DataView or an ArrayBuffer (no copy).
struct Bytes {
  uint8_t* data = nullptr;
  size_t length = 0;
};

inline bool GetBytes(Napi::Env env, Napi::Value v, const char* op, const char* name, Bytes* out) {
  // Raw N-API: it yields the data pointer of views on SharedArrayBuffers too.
  void* data = nullptr;
  size_t length = 0;
  if (v.IsTypedArray()) {
    napi_typedarray_type type;
    size_t elements;
    if (napi_get_typedarray_info(env, v, &type, &elements, &data, nullptr, nullptr) == napi_ok) {
      out->data = static_cast<uint8_t*>(data);
      out->length = v.As<Napi::TypedArray>().ByteLength();
      return true;
    }
  } else if (v.IsArrayBuffer()) {
    if (napi_get_arraybuffer_info(env, v, &data, &length) == napi_ok) {
      out->data = static_cast<uint8_t*>(data);
      out->length = length;
      return true;
    }
  } else if (v.IsDataView()) {
    if (napi_get_dataview_info(env, v, &length, &data, nullptr, nullptr) == napi_ok) {
      out->data = static_cast<uint8_t*>(data);
      out->length = length;
      return true;
    }
  }
  if (!env.IsExceptionPending()) {
    ThrowArg(env, op, std::string(name) + " must be a Buffer, TypedArray, DataView or ArrayBuffer");
  }
  return false;
}

// Name of an interface as a JS string from a fixed-size, maybe unterminated, kernel field.
inline Napi::String IfnameValue(Napi::Env env, const char* field, size_t size) {
  size_t n = 0;
  while (n < size && field[n] != '\0') n++;
  return Napi::String::New(env, field, n);
}

}  // namespace io
}  // namespace baton
