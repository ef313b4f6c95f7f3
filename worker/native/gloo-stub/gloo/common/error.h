// Stub: nothing from gloo/common/error.h is referenced by ProcessGroupGloo.hpp.
#pragma once
