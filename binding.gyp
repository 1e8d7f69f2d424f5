{
  # CPU-only fallback build of the same addon, for node-gyp-build's source build on a machine
  # without cmake. CMakeLists.txt is the primary build. The CPU kernels of each instruction set
  # (files *_avx2.cc, *_avx512.cc, *_avx512bf16.cc, and *_avxvnni.cc, *_avx512vnni.cc for quantised weights) are a static library with that set's flags,
  # the same groups as in CMakeLists.txt.
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
      "target_name": "moe_cpu_avx512",
      "type": "static_library",
      "sources": ["<!@(node -p \"require('fs').readdirSync('native/backends/cpu').filter(f => f.endsWith('_avx512.cc')).map(f => 'native/backends/cpu/' + f).join(' ')\")"],
      "include_dirs": ["native/include"],
      "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-fno-math-errno", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"]
    },
    {
      "target_name": "moe_cpu_avx512bf16",
      "type": "static_library",
      "sources": ["<!@(node -p \"require('fs').readdirSync('native/backends/cpu').filter(f => f.endsWith('_avx512bf16.cc')).map(f => 'native/backends/cpu/' + f).join(' ')\")"],
      "include_dirs": ["native/include"],
      "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-fno-math-errno", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c", "-mavx512bf16"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"]
    },
    {
      "target_name": "moe_cpu_avxvnni",
      "type": "static_library",
      "sources": ["<!@(node -p \"require('fs').readdirSync('native/backends/cpu').filter(f => f.endsWith('_avxvnni.cc')).map(f => 'native/backends/cpu/' + f).join(' ')\")"],
      "include_dirs": ["native/include"],
      "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-fno-math-errno", "-ffp-contract=off", "-mavx2", "-mfma", "-mf16c", "-mavxvnni"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"]
    },
    {
      "target_name": "moe_cpu_avx512vnni",
      "type": "static_library",
      "sources": ["<!@(node -p \"require('fs').readdirSync('native/backends/cpu').filter(f => f.endsWith('_avx512vnni.cc')).map(f => 'native/backends/cpu/' + f).join(' ')\")"],
      "include_dirs": ["native/include"],
      "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-fno-math-errno", "-ffp-contract=off", "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"]
    },
    {
      "target_name": "moe_kernels",
      "dependencies": ["moe_cpu_avx2", "moe_cpu_avx512", "moe_cpu_avx512bf16", "moe_cpu_avxvnni", "moe_cpu_avx512vnni"],
      "sources": [
        "<!@(node -p \"require('fs').readdirSync('native/napi').filter(f => f.endsWith('.cc')).map(f => 'native/napi/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/backends/cpu').filter(f => f.endsWith('.cc') && !/_(avx2|avx512|avx512bf16|avxvnni|avx512vnni)\\.cc$/.test(f)).map(f => 'native/backends/cpu/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/parallel').filter(f => f.endsWith('.cc')).map(f => 'native/parallel/' + f).join(' ')\")",
        "native/backends/cuda/backend_none.cc",
        "native/backends/registry.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native/include"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        # a JS error raised while a worker terminates is dropped, not thrown out of the wrapper (std::terminate)
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
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
