// RVOS_EDGE_API marks what librvos_edge exports; the library is built with hidden visibility.
#pragma once

#if defined(__GNUC__)
#define RVOS_EDGE_API __attribute__((visibility("default")))
#else
#define RVOS_EDGE_API
#endif
