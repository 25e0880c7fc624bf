{
  "targets": [
    {
      "target_name": "baton_native",
      "sources": [
        "src/addon.cc",
        "src/errors.cc",
        "src/kvm.cc",
        "src/vcpu.cc",
        "src/memory.cc",
        "src/fdio.cc",
        "src/tap.cc",
        "src/unix_socket.cc",
        "src/vhost.cc",
        "src/sched.cc"
      ],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-O2"],
      "cflags_cc!": ["-fno-exceptions"]
    }
  ]
}
