#include <cstdio>

#include "attnforge/attnforge.h"

int main() {
  std::printf("attnforge %s\n", af_version_string());
  return 0;
}
