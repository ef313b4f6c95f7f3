// Stub: ProcessGroupGloo.hpp only needs the name; c10d code is precompiled in libtorch_cpu.so.
#pragma once
