#include <stdio.h>
int main(void) {
    puts("execbox smoke ok");
    puts(__VERSION__);
    return 0;
}
