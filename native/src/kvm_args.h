// Argument readers shared by kvm.cc, vcpu.cc and memory.cc.
// Each returns false after throwing a TypeError that names the operation and the argument,
// so a wrapper reads `if (!ArgInt(...)) return env.Undefined();` and never aborts.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>

#include "errors.h"

namespace baton {

// An integral Number in [min, max].
inline bool ReadInt(Napi::Env env, const char* op, const char* name, Napi::Value v, int64_t min, int64_t max,
                    int64_t* out) {
  if (!v.IsNumber()) {
    ThrowArg(env, op, std::string(name) + " must be a number");
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= static_cast<double>(min) && d <= static_cast<double>(max)) || d != static_cast<double>(static_cast<int64_t>(d))) {
    ThrowArg(env, op, std::string(name) + " must be an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
    return false;
  }
  *out = static_cast<int64_t>(d);
  return true;
}

inline bool ArgInt(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, int64_t min, int64_t max,
                   int64_t* out) {
  return ReadInt(info.Env(), op, name, info[i], min, max, out);
}

// A file descriptor: an integer in [0, INT32_MAX].
inline bool ArgFd(const Napi::CallbackInfo& info, size_t i, const char* op, int* out) {
  int64_t v;
  if (!ArgInt(info, i, op, "fd", 0, INT32_MAX, &v)) return false;
  *out = static_cast<int>(v);
  return true;
}

// A 64-bit unsigned value given as a bigint or as a non-negative safe-integer Number.
inline bool ReadU64(Napi::Env env, const char* op, const char* name, Napi::Value v, uint64_t* out) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) {
      ThrowArg(env, op, std::string(name) + " must fit in 64 unsigned bits");
      return false;
    }
    *out = u;
    return true;
  }
  int64_t n;
  if (!ReadInt(env, op, name, v, 0, (int64_t{1} << 53) - 1, &n)) return false;
  *out = static_cast<uint64_t>(n);
  return true;
}

// A 32-bit unsigned value (Number).
inline bool ReadU32(Napi::Env env, const char* op, const char* name, Napi::Value v, uint32_t* out) {
  int64_t n;
  if (!ReadInt(env, op, name, v, 0, UINT32_MAX, &n)) return false;
  *out = static_cast<uint32_t>(n);
  return true;
}

// A Buffer (or any Uint8Array) of exactly `size` bytes; size 0 accepts any length.
inline bool ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, size_t size,
                      uint8_t** data, size_t* length) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowArg(info.Env(), op, std::string(name) + " must be a Buffer");
    return false;
  }
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  if (size != 0 && a.ByteLength() != size) {
    ThrowArg(info.Env(), op, std::string(name) + " must be a Buffer of exactly " + std::to_string(size) + " bytes (got " +
                                 std::to_string(a.ByteLength()) + ")");
    return false;
  }
  *data = a.Data();
  *length = a.ByteLength();
  return true;
}

// An object argument.
inline bool ArgObject(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name, Napi::Object* out) {
  if (!info[i].IsObject()) {
    ThrowArg(info.Env(), op, std::string(name) + " must be an object");
    return false;
  }
  *out = info[i].As<Napi::Object>();
  return true;
}

// Optional boolean property (missing or undefined -> fallback).
inline bool ReadOptBool(Napi::Env env, const char* op, Napi::Object o, const char* key, bool fallback, bool* out) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) {
    *out = fallback;
    return true;
  }
  if (!v.IsBoolean()) {
    ThrowArg(env, op, std::string(key) + " must be a boolean");
    return false;
  }
  *out = v.As<Napi::Boolean>().Value();
  return true;
}

inline Napi::BigInt U64ToBigInt(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }

}  // namespace baton
