{
  # CPU-only fallback build of the same addon, for node-gyp-build's source build on a machine
  # without cmake. CMakeLists.txt is the primary build.
  "targets": [
    {
      "target_name": "moe_cpu_avx2",
      "type": "static_library",
      "sources": ["<!@(node -p \"require('fs').readdirSync('native/backends/cpu').filter(f => f.endsWith('_avx2.cc')).map(f => 'native/backends/cpu/' + f).join(' ')\")"],
      "include_dirs": ["native/include"],
      "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-fno-math-errno", "-mavx2", "-mfma", "-mf16c"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"]
    },
    {
      "target_name": "moe_kernels",
      "dependencies": ["moe_cpu_avx2"],
      "sources": [
        "<!@(node -p \"require('fs').readdirSync('native/napi').filter(f => f.endsWith('.cc')).map(f => 'native/napi/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/backends/cpu').filter(f => f.endsWith('.cc') && !f.endsWith('_avx2.cc')).map(f => 'native/backends/cpu/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/parallel').filter(f => f.endsWith('.cc')).map(f => 'native/parallel/' + f).join(' ')\")",
        "native/backends/cuda/backend_none.cc",
        "native/backends/registry.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native/include"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        # why this build has no CUDA backend (scripts/build-native.js sets it; backend_none.cc reports it)
        "<!(node -p \"'MOE_NO_CUDA_REASON=' + JSON.stringify(process.env.MOE_NO_CUDA_REASON || 'it was built by node-gyp from binding.gyp, which has no CUDA backend')\")"
      ],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fno-math-errno"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "ldflags": ["-pthread"],
      "libraries": ["-ldl"]
    }
  ]
}
