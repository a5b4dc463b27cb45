#include <iostream>
int main() {
    std::cout << "execbox smoke ok\n" << __VERSION__ << "\n";
}
