/* Compiled by ctest as C99 with -Wall -Wextra -Werror -pedantic. */
#include "attnforge/attnforge.h"

int main(void) {
  af_tensor q = {0};
  af_attention_args args = {0};
  args.struct_size = (uint32_t)sizeof args;
  args.q = &q;
  args.backend = AF_BACKEND_AUTO;
  return af_version_number() == AF_VERSION_NUMBER ? 0 : (int)af_attention_forward(&args);
}
