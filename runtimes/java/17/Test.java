public class Main {
    public static void main(String[] args) {
        System.out.println("execbox smoke ok");
        System.out.println(System.getProperty("java.version"));
    }
}
